"""The one exception hierarchy of inspectline.

Library code raises these; only the edges translate them: the CLI prints the message and exits
non-zero, the HTTP service maps each class to a status code (see ``serving``). Every message names
the bad value and says what would have been accepted, so a user can fix the input without reading
the code.

    InspectError
    ├── ConfigError            invalid configuration file, flag or override
    ├── DataError              a dataset cannot be read, or a split cannot be made
    ├── InvalidImageError      bytes or a file that do not decode to an acceptable image
    │   ├── UnsupportedImageError     not PNG/JPEG/BMP/TIFF
    │   ├── ImageTooLargeError        more pixels than allowed (checked from the header)
    │   └── UndecodableImageError     empty, truncated or corrupt
    ├── CheckpointError        a weights file that is missing, truncated or not ours
    ├── ModelNotFoundError     a model version or reference that the registry does not hold
    ├── TrainingError          training cannot go on (for example a collapsed model)
    ├── EngineError            an inference engine cannot run as asked (unknown engine or precision, a
    │   │                      precision this CPU lacks, no such export)
    │   └── EngineUnavailableError  its runtime is not installed (the message names the pip extra)
    ├── ExportError            a model cannot be exported in the format and precision asked
    │   └── ParityError            the export's verdicts differ from the checkpoint's beyond the bound
    └── StoreError             the frame store cannot be reached or refuses a request
    │   ├── FrameNotFoundError     no stored frame has that id
    │   └── InvalidLabelError      a label that is not ok/defective, or a bad review file
    └── RequestError           a service request the service refuses (serving/http.py maps each to a status)
        ├── InvalidRequestError       malformed ids, parameters or bodies
        ├── UnauthorizedError         no bearer token where one is needed
        ├── ForbiddenError            a token that is wrong, or lacks the scope the route needs
        ├── FrameIdConflictError      a frame id reused for different image bytes
        ├── PayloadTooLargeError      a body over the configured limit
        ├── UnsupportedMediaTypeError a content type the route does not take
        ├── NotReadyError             no model loaded yet
        └── OverloadedError           in-flight or queue limit reached

The HTTP status of each lives in one table in ``inspectline.serving.http``; ``validation_messages``
turns a pydantic error into the one-line-per-field text every layer shows.
"""

from __future__ import annotations

from pydantic import ValidationError


class InspectError(Exception):
    """Base class of every error inspectline raises on purpose."""


class ConfigError(InspectError):
    """A configuration value is invalid or unknown."""


class DataError(InspectError):
    """A dataset is missing, unreadable or cannot be split as asked."""


class InvalidImageError(InspectError):
    """Bytes or a file that do not decode to an image we accept."""


class UnsupportedImageError(InvalidImageError):
    """Not one of the accepted image formats."""


class ImageTooLargeError(InvalidImageError):
    """More pixels than the configured limit (a decompression-bomb guard, checked from the header)."""


class UndecodableImageError(InvalidImageError):
    """Empty, truncated or corrupt image data."""


class CheckpointError(InspectError):
    """A checkpoint file is missing, truncated or was not written by inspectline."""


class ModelNotFoundError(InspectError):
    """A model version or reference that the registry does not hold."""


class TrainingError(InspectError):
    """Training stopped because it cannot produce a useful model."""


class EngineError(InspectError):
    """An inference engine cannot be built or run as asked."""


class EngineUnavailableError(EngineError):
    """The runtime an engine needs is not installed; the message gives the ``pip install`` command."""


class ExportError(InspectError):
    """A model version cannot be exported in the requested format and precision."""


class ParityError(ExportError):
    """An export was refused: its verdicts agree with the checkpoint's less than the bound requires."""


class StoreError(InspectError):
    """The frame store cannot be reached, or a store request is invalid."""


class FrameNotFoundError(StoreError):
    """No stored frame has the requested id."""


class PartNotFoundError(StoreError):
    """No part verdict is stored for the requested part id."""


class InvalidLabelError(StoreError):
    """A label that is not one of ok/defective, or a review file that cannot be imported."""


class RequestError(InspectError):
    """A service request that is refused; ``headers`` go out with the error response."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class InvalidRequestError(RequestError):
    """Malformed ids, query parameters, form fields or bodies."""


class UnauthorizedError(RequestError):
    """The route needs a bearer token and none was sent."""


class ForbiddenError(RequestError):
    """The bearer token is unknown, or lacks the scope the route needs."""


class FrameIdConflictError(RequestError):
    """A frame id already judged for other image bytes: answering would give another image's verdict."""


class PayloadTooLargeError(RequestError):
    """The request body is over the configured limit."""


class UnsupportedMediaTypeError(RequestError):
    """A content type the route does not take."""


class NotReadyError(RequestError):
    """No model is loaded and warmed yet."""


class OverloadedError(RequestError):
    """The in-flight or queue limit is reached; retry after ``Retry-After`` seconds."""


def validation_messages(exc: ValidationError) -> list[str]:
    """One ``where: problem (got value)`` line per field of a pydantic error."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"{where}: {err['msg']}{got}")
    return lines
