"""Reading what a camera posts: the body within its limit, multipart parts, and the frame's metadata.

Frame metadata is read in one place: :func:`meta_sources` (a FastAPI dependency) takes each id from the
query or its ``X-`` header, and :func:`build_meta` merges it with the form fields of a multipart body,
checking every value that was sent, whichever wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
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


_CAPTURED_AT = TypeAdapter(datetime)  # the same parser the other routes' datetime parameters use


def _sources(request: Request, names: tuple[str, ...]) -> MetaSources:
    """Each field in ``names`` from the query, else its ``X-`` header; every value sent must be valid.

    Read from the request here rather than declared as ten FastAPI parameters, which FastAPI inspects
    again on every request (a few percent of the gateway's own CPU per single-post frame, measured with
    ``benchmarks/gateway_app.py``); :func:`meta_parameters` documents them in the OpenAPI document.
    """
    values: dict[str, Any] = dict.fromkeys(_META_FIELDS)
    problems = []
    for name in names:
        header = _HEADERS[name]
        for where, key, sent in (
            ("query parameter", name, request.query_params.get(name)),
            ("header", header, request.headers.get(header)),
        ):
            if sent is None:
                continue
            if name == "captured_at":
                try:
                    value: Any = _CAPTURED_AT.validate_python(sent)
                except ValidationError:
                    problems.append(f"{where} {key}={sent!r} is not an ISO 8601 date-time")
                    continue
            elif is_valid_id(sent):
                value = sent
            else:
                problems.append(f"{where} {key}={sent!r} is not a valid id")
                continue
            values[name] = _pick(values[name], value)
    if problems:
        raise InvalidRequestError(_meta_problem(problems))
    return MetaSources(**values)


async def meta_sources(request: Request) -> MetaSources:
    """The one place frame metadata is read: each field from the query, else its X- header."""
    return _sources(request, _META_FIELDS)


async def batch_sources(request: Request) -> MetaSources:
    """:func:`meta_sources` for a batch: the same fields but a frame id, which each file part names itself."""
    return _sources(request, tuple(n for n in _META_FIELDS if n != "frame_id"))


def meta_parameters(*, frame_id: bool) -> list[dict[str, Any]]:
    """The query parameters :func:`meta_sources` reads, for a route's OpenAPI document."""
    described = {
        "line_id": "production line id",
        "camera_id": "camera id",
        "part_id": "part id, when known",
        "frame_id": "unique per camera; generated when absent",
    }
    ids = [
        {
            "name": name,
            "in": "query",
            "required": name in ("line_id", "camera_id"),  # or as a header or form field: see the description
            "description": text,
            "schema": {"type": "string", "pattern": ID_PATTERN},
        }
        for name, text in described.items()
        if frame_id or name != "frame_id"
    ]
    captured = {
        "name": "captured_at",
        "in": "query",
        "required": False,
        "description": "capture time, ISO 8601",
        "schema": {"type": "string", "format": "date-time"},
    }
    return [*ids, captured]


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
        raise InvalidRequestError(_meta_problem(problems))
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
_META_FIELDS = (*_ID_FIELDS, "captured_at")
_HEADERS = {name: "X-" + "-".join(word.capitalize() for word in name.split("_")) for name in _META_FIELDS}


def _meta_problem(problems: list[str]) -> str:
    return (
        f"{'; '.join(problems)}. Give line_id and camera_id (and optionally part_id, frame_id, captured_at) as "
        f"query parameters, X-Line-Id style headers or form fields; ids are {ID_RULE}"
    )
