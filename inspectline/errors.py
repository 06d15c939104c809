"""The one exception hierarchy of inspectline.

Library code raises these; only the edges translate them: the CLI prints the message and exits
non-zero, the HTTP service maps each class to a status code (see ``serving``). Every message names
the bad value and says what would have been accepted, so a user can fix the input without reading
the code.

    InspectError
    ├── ConfigError            invalid configuration file, flag or override
    ├── DataError              a dataset cannot be read, or a split cannot be made
    ├── InvalidImageError      bytes or a file that do not decode to an acceptable image
    ├── CheckpointError        a weights file that is missing, truncated or not ours
    ├── ModelNotFoundError     a model version or reference that the registry does not hold
    ├── TrainingError          training cannot go on (for example a collapsed model)
    ├── EngineError            an inference engine cannot run as asked (unknown engine or precision, a
    │   │                      precision this CPU lacks, no such export)
    │   └── EngineUnavailableError  its runtime is not installed (the message names the pip extra)
    ├── ExportError            a model cannot be exported in the format and precision asked
    │   └── ParityError            the export's verdicts differ from the checkpoint's beyond the bound
    └── StoreError             the frame store cannot be reached or refuses a request
        ├── FrameNotFoundError     no stored frame has that id
        └── InvalidLabelError      a label that is not ok/defective, or a bad review file
"""

from __future__ import annotations


class InspectError(Exception):
    """Base class of every error inspectline raises on purpose."""


class ConfigError(InspectError):
    """A configuration value is invalid or unknown."""


class DataError(InspectError):
    """A dataset is missing, unreadable or cannot be split as asked."""


class InvalidImageError(InspectError):
    """Bytes or a file that do not decode to an image we accept.

    ``code`` is a short machine-readable reason (``unsupported_type``, ``undecodable``,
    ``too_large``) that the service turns into an HTTP status.
    """

    def __init__(self, message: str, *, code: str = "undecodable") -> None:
        super().__init__(message)
        self.code = code


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


class InvalidLabelError(StoreError):
    """A label that is not one of ok/defective, or a review file that cannot be imported."""
