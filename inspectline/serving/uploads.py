"""Reading what a camera posts: the body within its limit, multipart parts, and the frame's metadata.

Frame metadata is read in one place: :func:`meta_sources` (a FastAPI dependency) takes each id from the
query or its ``X-`` header, and :func:`build_meta` merges it with the form fields of a multipart body,
checking every value that was sent, whichever wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Header, Query, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from inspectline.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from inspectline.ids import ID_PATTERN, ID_RULE, is_valid_id, new_frame_id
from inspectline.serving.records import FrameMeta

MULTIPART = "multipart/form-data"


def content_type_of(request: Request) -> str:
    return request.headers.get("content-type", "")


async def read_body(request: Request, *, max_bytes: int, accepted: tuple[str, ...]) -> tuple[bytes, str]:
    """The whole body, within ``max_bytes`` (checked before and while reading), and its media type."""
    content_type = content_type_of(request).split(";")[0].strip().lower()
    if content_type not in accepted:
        msg = f"Content-Type {content_type or '(none)'!r} is not accepted here; use {', '.join(accepted)}"
        raise UnsupportedMediaTypeError(msg)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        msg = f"body of {int(declared):,} bytes exceeds the limit of {max_bytes:,} bytes"
        raise PayloadTooLargeError(msg)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            msg = f"body exceeds the limit of {max_bytes:,} bytes"
            raise PayloadTooLargeError(msg)
    if not body:
        msg = "the request body is empty; send the encoded image"
        raise InvalidRequestError(msg)
    return bytes(body), content_type


@dataclass(frozen=True)
class FilePart:
    filename: str | None
    data: bytes
    frame_id: str | None  # the part's own X-Frame-Id header, when the client names the frame


def parse_multipart(
    content_type: str, body: bytes, *, file_field: str, max_files: int
) -> tuple[list[FilePart], dict[str, list[str]]]:
    """The ``file_field`` parts (raw bytes, with or without a filename) and the other fields of a multipart body.

    Parts are read with python-multipart's streaming parser rather than a form parser: a part is an image
    because of its field name, not because the client happened to send a filename.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        msg = "the multipart body has no boundary in its Content-Type"
        raise InvalidRequestError(msg)
    parts: list[dict] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(header.get("field", b"")).decode("latin-1").lower()] = bytes(
            header.get("value", b"")
        ).decode("latin-1")
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types on malformed input
        msg = f"malformed multipart body: {exc}"
        raise InvalidRequestError(msg) from None
    files: list[FilePart] = []
    fields: dict[str, list[str]] = {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("latin-1")
        filename = disposition.get(b"filename")
        if name == file_field:
            if len(files) == max_files:
                msg = f"the multipart body holds more than {max_files} {file_field!r} parts"
                raise InvalidRequestError(msg)
            filename = filename.decode("utf-8", "replace") if filename is not None else None
            files.append(FilePart(filename, bytes(part["data"]), part["headers"].get("x-frame-id")))
        else:
            try:
                fields.setdefault(name, []).append(bytes(part["data"]).decode("utf-8"))
            except UnicodeDecodeError:
                msg = f"multipart field {name!r} is not UTF-8 text; images go in the {file_field!r} part"
                raise InvalidRequestError(msg) from None
    return files, fields


@dataclass(frozen=True)
class MetaSources:
    """Frame metadata as sent in the query and headers (the form is read later, with the body)."""

    line_id: str | None
    camera_id: str | None
    part_id: str | None
    frame_id: str | None
    captured_at: datetime | None


def _pick(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


async def meta_sources(
    line_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="production line id")] = None,
    camera_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="camera id")] = None,
    part_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="part id, when known")] = None,
    frame_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="unique per camera; generated when absent")
    ] = None,
    captured_at: Annotated[datetime | None, Query(description="capture time, ISO 8601")] = None,
    x_line_id: Annotated[str | None, Header(alias="X-Line-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_camera_id: Annotated[str | None, Header(alias="X-Camera-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_part_id: Annotated[str | None, Header(alias="X-Part-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_frame_id: Annotated[str | None, Header(alias="X-Frame-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_captured_at: Annotated[datetime | None, Header(alias="X-Captured-At", include_in_schema=False)] = None,
) -> MetaSources:
    """The one place frame metadata is read: each field from the query, else its X- header."""
    return MetaSources(
        line_id=_pick(line_id, x_line_id),
        camera_id=_pick(camera_id, x_camera_id),
        part_id=_pick(part_id, x_part_id),
        frame_id=_pick(frame_id, x_frame_id),
        captured_at=_pick(captured_at, x_captured_at),
    )


async def batch_sources(
    line_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="production line id")] = None,
    camera_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="camera id")] = None,
    part_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="part id, when known")] = None,
    captured_at: Annotated[datetime | None, Query(description="capture time, ISO 8601")] = None,
    x_line_id: Annotated[str | None, Header(alias="X-Line-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_camera_id: Annotated[str | None, Header(alias="X-Camera-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_part_id: Annotated[str | None, Header(alias="X-Part-Id", pattern=ID_PATTERN, include_in_schema=False)] = None,
    x_captured_at: Annotated[datetime | None, Header(alias="X-Captured-At", include_in_schema=False)] = None,
) -> MetaSources:
    """:func:`meta_sources` for a batch: the same fields but a frame id, which each file part names itself."""
    return await meta_sources(
        line_id, camera_id, part_id, None, captured_at, x_line_id, x_camera_id, x_part_id, None, x_captured_at
    )


def build_meta(sources: MetaSources, form: dict[str, list[str]], *, frame_id: str | None = None) -> FrameMeta:
    """Merge query/header values with form fields (query and headers win); every value sent must be valid."""
    problems = []
    for name, values in form.items():
        if name in _ID_FIELDS and (len(values) > 1 or not is_valid_id(values[0])):
            problems.append(f"form field {name}={values if len(values) > 1 else values[0]!r} is not one valid id")
    if frame_id is not None and not is_valid_id(frame_id):
        problems.append(f"X-Frame-Id {frame_id!r} is not a valid id")
    form_captured = (form.get("captured_at") or [None])[0]
    captured: datetime | None = sources.captured_at
    if form_captured is not None:
        try:
            captured = captured or datetime.fromisoformat(form_captured)
        except ValueError:
            problems.append(f"captured_at={form_captured!r} is not an ISO 8601 date-time")
    values = {n: _pick(getattr(sources, n), *(form.get(n) or [None])[:1]) for n in _ID_FIELDS}
    problems += [f"missing {n}" for n in ("line_id", "camera_id") if not values[n]]
    if problems:
        msg = (
            f"{'; '.join(problems)}. Give line_id and camera_id (and optionally part_id, frame_id, captured_at) as "
            f"query parameters, X-Line-Id style headers or form fields; ids are {ID_RULE}"
        )
        raise InvalidRequestError(msg)
    explicit = frame_id or values["frame_id"]
    return FrameMeta(
        line_id=values["line_id"],
        camera_id=values["camera_id"],
        part_id=values["part_id"],
        frame_id=explicit or new_frame_id(),
        captured_at=captured,
        explicit_id=bool(explicit),
    )


_ID_FIELDS = ("line_id", "camera_id", "part_id", "frame_id")
