"""The service's HTTP face, without Ray: the FastAPI app, its response models, and the one error table.

    app = create_app(services)      # the gateway deployment passes Ray-backed services; tests pass fakes

Routes (OpenAPI at ``/openapi.json``, docs at ``/docs``; the scope each needs in brackets):

    POST /v1/frames               [frames:write] one encoded image (raw body or multipart) -> verdict
    POST /v1/frames/batch         [frames:write] several images (multipart) -> verdicts
    GET  /v1/frames               [read]   stored frames, filtered, least sure first
    GET  /v1/frames/{id}          [read]   one stored frame (with any shadow verdicts)
    GET  /v1/frames/{id}/image    [review] its image, when retention kept it
    PUT  /v1/frames/{id}/label    [review] {"label": "ok" | "defective", "reviewer": "..."}
    GET  /v1/model                [read]   the model being served
    GET  /healthz  GET /readyz  GET /metrics   open: probes and Prometheus

Errors: every exception becomes ``{"error": code, "detail": message}`` through :data:`ERRORS`, one table
from exception type to status, code and description (the most specific class wins); it also writes
each route's error responses into the OpenAPI document, so the document cannot drift from behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from inspectline.audit import AuditLog
from inspectline.config import GatewayOptions
from inspectline.errors import (
    ConfigError,
    ForbiddenError,
    FrameIdConflictError,
    FrameNotFoundError,
    ImageTooLargeError,
    InspectError,
    InvalidImageError,
    InvalidLabelError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    StoreError,
    UnauthorizedError,
    UndecodableImageError,
    UnsupportedImageError,
    UnsupportedMediaTypeError,
)
from inspectline.ids import ID_PATTERN, ID_RULE, is_valid_id, new_frame_id
from inspectline.imaging import IMAGE_FORMATS, IMAGE_MIME_TYPES, probe_image
from inspectline.serving.auth import Principal, TokenTable
from inspectline.serving.judging import Answer, FrameService, StoreAccess
from inspectline.serving.records import ErrorObservation, FrameMeta, ServedModel
from inspectline.store import ORDERS, VERDICTS, StoredFrame
from inspectline.timeparse import SINCE_FORMS, parse_since

log = logging.getLogger("ray.serve")
MULTIPART = "multipart/form-data"
IMAGE_TYPES = tuple(f.mime_type for f in IMAGE_FORMATS)
MAX_OFFSET = 10_000_000
MAX_STORE_ID = 2**63 - 1


# --- the error table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorSpec:
    status: int
    code: str
    description: str


ERRORS: dict[type[Exception], ErrorSpec] = {
    InvalidRequestError: ErrorSpec(400, "invalid_request", "malformed ids, parameters or body"),
    RequestValidationError: ErrorSpec(400, "invalid_request", "malformed ids, parameters or body"),
    ConfigError: ErrorSpec(400, "invalid_request", "a parameter outside its accepted values"),
    InvalidLabelError: ErrorSpec(400, "invalid_label", "a label other than ok/defective, or no reviewer"),
    UnauthorizedError: ErrorSpec(401, "unauthorized", "no bearer token"),
    ForbiddenError: ErrorSpec(403, "forbidden", "a wrong token, or one without the scope this route needs"),
    FrameNotFoundError: ErrorSpec(404, "frame_not_found", "no stored frame has this id"),
    FrameIdConflictError: ErrorSpec(409, "frame_id_conflict", "this frame id was judged for other image bytes"),
    PayloadTooLargeError: ErrorSpec(413, "payload_too_large", "the body is over max_body_bytes"),
    UnsupportedMediaTypeError: ErrorSpec(415, "unsupported_media_type", "a content type this route does not take"),
    UnsupportedImageError: ErrorSpec(415, "unsupported_media_type", "not a PNG, JPEG, BMP or TIFF image"),
    UndecodableImageError: ErrorSpec(422, "undecodable_image", "an empty, truncated or corrupt image"),
    ImageTooLargeError: ErrorSpec(422, "image_too_large", "more pixels than max_pixels (read from the header)"),
    InvalidImageError: ErrorSpec(422, "unprocessable_image", "an image the model cannot process"),
    NotReadyError: ErrorSpec(503, "not_ready", "no model loaded yet"),
    OverloadedError: ErrorSpec(503, "overloaded", "the in-flight or queue limit is reached"),
    StoreError: ErrorSpec(503, "store_unavailable", "the frame store cannot be reached"),
}
NOT_FOUND = ErrorSpec(404, "not_found", "no such path, or a stored frame without its image")
RETRY_AFTER = {503}


def error_spec(exc: Exception) -> ErrorSpec | None:
    """The entry of the most specific class of ``exc`` in :data:`ERRORS`."""
    return next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), None)


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. frame_id_conflict")
    detail: str = Field(description="what was wrong and what is accepted")


class ConflictBody(ErrorBody):
    first_sha256: str | None = Field(description="content hash of the image first judged under this frame id")
    sent_sha256: str = Field(description="content hash of the image in this request")


def error_response(exc: Exception) -> JSONResponse:
    spec = error_spec(exc)
    if spec is None:
        log.error("unexpected error in the gateway", exc_info=exc)
        return JSONResponse({"error": "internal", "detail": f"unexpected error: {type(exc).__name__}"}, 500)
    body: dict[str, Any] = {"error": spec.code, "detail": _detail(exc)}
    if isinstance(exc, FrameIdConflictError):
        body |= {"first_sha256": exc.first_sha256, "sent_sha256": exc.sent_sha256}
    headers = dict(getattr(exc, "headers", None) or {})
    if spec.status in RETRY_AFTER:
        headers.setdefault("Retry-After", "1")
    return JSONResponse(body, status_code=spec.status, headers=headers)


def _detail(exc: Exception) -> str:
    if isinstance(exc, RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"] if p not in ("query", "header", "path", "body"))
            got = f" (got {e['input']!r})" if isinstance(e.get("input"), (str, int, float)) else ""
            parts.append(f"{where or 'request'}: {e['msg']}{got}")
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


def documented(*errors: type[Exception], not_found: bool = False) -> dict[int | str, dict]:
    """The ``responses=`` of a route: each error's status with its JSON body (and Retry-After on 503)."""
    out: dict[int | str, dict] = {}
    for spec in [ERRORS[e] for e in errors] + ([NOT_FOUND] if not_found else []):
        entry = out.setdefault(spec.status, {"model": ErrorBody, "description": ""})
        entry["description"] = "; ".join(filter(None, [entry["description"], f"`{spec.code}`: {spec.description}"]))
        if spec.status == 409:
            entry["model"] = ConflictBody
        if spec.status in RETRY_AFTER:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


AUTH_ERRORS = (UnauthorizedError, ForbiddenError)
BODY_ERRORS = (InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError)
IMAGE_ERRORS = (UnsupportedImageError, UndecodableImageError, ImageTooLargeError, InvalidImageError)


# --- response models --------------------------------------------------------------------------
class Verdict(BaseModel):
    """The answer to one frame."""

    frame_id: str
    line_id: str
    camera_id: str
    part_id: str | None
    verdict: Literal["OK", "DEFECTIVE", "UNSURE"] = Field(description="UNSURE within the band around the threshold")
    defect_probability: float = Field(ge=0, le=1, description="calibrated probability that the part is defective")
    confidence: float = Field(ge=0, le=1, description="calibrated probability that the OK/DEFECTIVE call is right")
    threshold: float = Field(ge=0, le=1)
    model_version: str = Field(description="the version that judged this frame")
    views: dict[str, float] = Field(description="calibrated defect probability per TTA view")
    latency_ms: float = Field(ge=0)
    captured_at: datetime | None
    received_at: datetime
    content_sha256: str = Field(description="SHA-256 of the image bytes judged")
    duplicate: bool = Field(description="true when this frame id was judged before for these same bytes")


class BatchItem(BaseModel):
    index: int
    filename: str | None
    status: int = Field(description="200, or the status this file alone would have got")
    result: Verdict | None = None
    error: str | None = None
    detail: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class StoredFrameView(BaseModel):
    id: int
    line_id: str
    camera_id: str
    frame_id: str
    part_id: str | None
    captured_at: datetime | None
    received_at: datetime
    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    uncertainty: float = Field(description="|defect_probability - threshold|: the smaller, the less sure")
    model_version: str
    views: dict[str, float]
    content_sha256: str | None
    image_sha256: str | None
    image_format: str | None
    image_url: str | None
    label: str | None
    labelled_by: str | None
    labelled_at: datetime | None


class ShadowView(BaseModel):
    model_version: str
    verdict: str
    defect_probability: float


class StoredFrameDetail(StoredFrameView):
    shadow: list[ShadowView]


class FrameList(BaseModel):
    frames: list[StoredFrameView]
    total: int
    limit: int
    offset: int


class LabelRequest(BaseModel):
    label: Literal["ok", "defective"]
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"\S", description="who labelled it (name or e-mail)")


class ModelInfo(BaseModel):
    version: str
    arch: str
    classes: list[str]
    threshold: float
    unsure_band: float
    temperature: float
    tta_views: list[str]
    image_size: int
    color_mode: str
    created_at: str | None
    parent: str | None
    metrics: dict[str, float]
    operating_point: dict[str, Any] | None = Field(None, description="the operating point in force, when one was set")
    shadow_version: str | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model_version: str


def verdict_of(answer: Answer) -> Verdict:
    m = answer.meta
    return Verdict(
        frame_id=m.frame_id,
        line_id=m.line_id,
        camera_id=m.camera_id,
        part_id=m.part_id,
        verdict=answer.verdict,
        defect_probability=answer.defect_probability,
        confidence=answer.confidence,
        threshold=answer.threshold,
        model_version=answer.model_version,
        views=answer.views,
        latency_ms=answer.latency_s * 1000,
        captured_at=m.captured_at,
        received_at=answer.received_at,
        content_sha256=answer.content_sha256,
        duplicate=answer.duplicate,
    )


def frame_view(frame: StoredFrame) -> dict[str, Any]:
    return frame.to_dict() | {"image_url": f"/v1/frames/{frame.id}/image" if frame.image_sha256 else None}


# --- what the routes need -------------------------------------------------------------------------
@dataclass
class Services:
    """Everything the routes call; ``serving.gateway`` builds it from Ray handles, tests from fakes."""

    options: Callable[[], GatewayOptions]
    tokens: TokenTable
    frames: FrameService
    store: StoreAccess
    audit: AuditLog
    describe_model: Callable[[ServedModel], Awaitable[dict[str, Any]]]
    render_metrics: Callable[[], Awaitable[tuple[bytes, str]]]


# --- request parts: auth, body, frame metadata ----------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>; see `inspect tokens add`")
Id = Annotated[str, Field(pattern=ID_PATTERN)]


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers whose token carries ``scope``."""

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Principal:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        return request.app.state.services.tokens.authorize(header, scope)

    return check


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


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]
Writer = Annotated[Principal, Depends(require("frames:write"))]
Reader = Annotated[Principal, Depends(require("read"))]
Reviewer = Annotated[Principal, Depends(require("review"))]
StoreId = Annotated[int, Path(ge=0, le=MAX_STORE_ID, description="the stored frame's id (from GET /v1/frames)")]
Since = Annotated[
    str | None,
    Query(
        max_length=40,
        description=f"received at or after: {SINCE_FORMS}",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "enum": ["last-week", "yesterday", "today"]},
                {"type": "string", "pattern": r"^[1-9][0-9]{0,3}[wdhm]$"},
            ]
        },
    ),
]

# Each frame a listing returns can be read, its image fetched and labelled by its store id.
_FRAME_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/frames/0/id"}}
    for name, operation in (
        ("GetFrame", "get_frame"),
        ("GetFrameImage", "get_frame_image"),
        ("LabelFrame", "label_frame"),
    )
}
_IMAGE_BODY = {"type": "string", "format": "binary"}
_FRAME_ID_HEADER = {"type": "string", "pattern": ID_PATTERN}
_META_ELSEWHERE = (
    " The ids are canonical as query parameters; each may instead come as a header (`X-Line-Id`, `X-Camera-Id`, "
    "`X-Part-Id`, `X-Frame-Id`, `X-Captured-At`) or, in a multipart body, as a form field of the same name."
)


def create_app(services: Services) -> FastAPI:
    """The FastAPI app of one gateway replica."""
    app = FastAPI(
        title="inspectline",
        version="1",
        description="Defect inspection: post frames, get OK / DEFECTIVE / UNSURE verdicts with calibrated confidence.",
    )
    app.state.services = services

    @app.exception_handler(Exception)
    async def _any_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestError | InspectError | RequestValidationError):
            if not isinstance(exc, UnauthorizedError | ForbiddenError):  # probes of auth are not errors of ours
                services.frames.outbox.put(ErrorObservation(code=error_spec(exc).code))
        return error_response(exc)

    app.add_exception_handler(RequestValidationError, _any_error)
    for cls in (InspectError, RequestError):
        app.add_exception_handler(cls, _any_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several
            methods = {m for r in app.routes if r.matches(request.scope)[0] != Match.NONE for m in r.methods or ()}
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"error": code, "detail": str(exc.detail)}, exc.status_code, headers=headers)

    @app.get("/healthz", summary="Liveness: the gateway answers", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: a model is loaded and warmed",
        response_model=Readiness,
        responses=documented(NotReadyError),
    )
    async def readyz(s: ServicesDep) -> dict:
        return {"status": "ready", "model_version": s.frames.follower.require_ready().version}

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format), line-wide",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(s: ServicesDep) -> Response:
        await s.frames.outbox.flush()  # include every verdict this gateway has answered so far
        body, content_type = await s.render_metrics()
        return Response(content=body, media_type=content_type)

    @app.post(
        "/v1/frames",
        response_model=Verdict,
        summary="Judge one frame",
        description="Body: the encoded image (PNG, JPEG, BMP or TIFF), or multipart/form-data with one file part "
        "and the metadata as fields. Same frame id and same bytes again: the first verdict (`duplicate: true`); "
        "same frame id and other bytes: 409." + _META_ELSEWHERE,
        responses=documented(
            *AUTH_ERRORS, *BODY_ERRORS, FrameIdConflictError, *IMAGE_ERRORS, NotReadyError, OverloadedError
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    **{t: {"schema": _IMAGE_BODY} for t in IMAGE_TYPES},
                    MULTIPART: {
                        "schema": {"type": "object", "required": ["image"], "properties": {"image": _IMAGE_BODY}},
                        "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
                    },
                },
            }
        },
    )
    async def post_frame(
        request: Request, s: ServicesDep, _: Writer, sources: Annotated[MetaSources, Depends(meta_sources)]
    ) -> Verdict:
        received = time.perf_counter()
        options = s.options()
        with s.frames.admit():
            accepted = (*IMAGE_MIME_TYPES, MULTIPART)
            body, content_type = await read_body(request, max_bytes=options.max_body_bytes, accepted=accepted)
            form: dict[str, list[str]] = {}
            if content_type == MULTIPART:
                files, form = parse_multipart(content_type_of(request), body, file_field="image", max_files=1)
                if len(files) != 1:
                    msg = f"a multipart body must hold exactly one image file part, got {len(files)}"
                    raise InvalidRequestError(msg)
                body = files[0].data
            meta = build_meta(sources, form)
            probe_image(body, max_pixels=options.max_pixels)  # cheap: the header only; the inspector decodes
            return verdict_of(await s.frames.judge(meta, body, received=received))

    @app.post(
        "/v1/frames/batch",
        response_model=BatchResponse,
        summary="Judge several frames",
        description="multipart/form-data with one file part per image (field name `files`). Frame ids are "
        "generated, never taken from file names, unless the client names a frame with an `X-Frame-Id` header on "
        "its file part (`curl -F 'files=@a.png;headers=\"X-Frame-Id: cam3-000187\"'`). Each file gets its own "
        "result and status, as if posted alone." + _META_ELSEWHERE,
        responses=documented(*AUTH_ERRORS, *BODY_ERRORS, NotReadyError, OverloadedError),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    MULTIPART: {
                        "schema": {
                            "type": "object",
                            "required": ["files"],
                            "properties": {
                                "files": {"type": "array", "items": _IMAGE_BODY, "minItems": 1},
                            },
                        },
                        "encoding": {
                            "files": {
                                "contentType": ", ".join(IMAGE_TYPES),
                                "headers": {"X-Frame-Id": {"schema": _FRAME_ID_HEADER}},
                            }
                        },
                    }
                },
            }
        },
    )
    async def post_batch(
        request: Request,
        s: ServicesDep,
        _: Writer,
        sources: Annotated[MetaSources, Depends(batch_sources)],
    ) -> BatchResponse:
        received = time.perf_counter()
        options = s.options()
        with s.frames.admit():
            body, _ = await read_body(request, max_bytes=options.max_body_bytes, accepted=(MULTIPART,))
            files, form = parse_multipart(
                content_type_of(request), body, file_field="files", max_files=options.max_batch_files
            )
        if not files:
            msg = "the multipart body holds no image file parts (field name: files)"
            raise InvalidRequestError(msg)
        if "frame_id" in form:
            msg = "a batch names its frames with an X-Frame-Id header on each file part, not a frame_id field"
            raise InvalidRequestError(msg)
        build_meta(sources, form)  # the ids shared by every file are checked once, up front
        s.frames.follower.require_ready()

        async def one(i: int, part: FilePart) -> BatchItem:
            name = f"file {i} ({part.filename})" if part.filename else f"file {i}"
            try:
                meta = build_meta(sources, form, frame_id=part.frame_id)
                probe_image(part.data, max_pixels=options.max_pixels, name=name)
                answer = await s.frames.judge(meta, part.data, received=received, name=name)
                return BatchItem(index=i, filename=part.filename, status=200, result=verdict_of(answer))
            except (RequestError, InspectError) as exc:
                spec = error_spec(exc)
                s.frames.outbox.put(ErrorObservation(code=spec.code))
                return BatchItem(index=i, filename=part.filename, status=spec.status, error=spec.code, detail=str(exc))

        with s.frames.admit(len(files)):
            items = await asyncio.gather(*(one(i, part) for i, part in enumerate(files)))
        return BatchResponse(results=list(items))

    @app.get(
        "/v1/frames",
        response_model=FrameList,
        summary="Stored frames, filtered; least sure first",
        responses={200: {"links": _FRAME_LINKS}, **documented(InvalidRequestError, *AUTH_ERRORS, StoreError)},
    )
    async def list_frames(
        s: ServicesDep,
        _: Reader,
        since: Since = None,
        until: Since = None,
        line: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        camera: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        verdict: Annotated[Literal[VERDICTS] | None, Query(description="OK, DEFECTIVE or UNSURE")] = None,  # type: ignore[valid-type]
        labelled: Annotated[bool | None, Query(description="true: reviewed only; false: still to review")] = None,
        has_image: Annotated[bool | None, Query(description="true: only frames whose image was kept")] = None,
        order: Annotated[Literal[ORDERS], Query(description="least sure first, newest or oldest")] = "uncertainty",  # type: ignore[valid-type]
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict:
        filters = {
            "since": parse_since(since, name="since") if since is not None else None,
            "until": parse_since(until, name="until") if until is not None else None,
            "line": line,
            "camera": camera,
            "verdict": verdict,
            "labelled": labelled,
            "has_image": has_image,
        }
        frames = await s.store.call("query", **filters, order=order, limit=limit, offset=offset)
        total = await s.store.call("count", **filters)
        return {"frames": [frame_view(f) for f in frames], "total": total, "limit": limit, "offset": offset}

    @app.get(
        "/v1/frames/{id:int}",
        operation_id="get_frame",
        response_model=StoredFrameDetail,
        summary="One stored frame",
        responses=documented(InvalidRequestError, *AUTH_ERRORS, FrameNotFoundError, StoreError),
    )
    async def get_frame(id: StoreId, s: ServicesDep, _: Reader) -> dict:
        frame = await s.store.call("get", id)
        shadows = await s.store.call("shadow_verdicts", id)
        shadow = [
            {"model_version": v.model_version, "verdict": v.verdict, "defect_probability": v.defect_probability}
            for v in shadows
        ]
        return frame_view(frame) | {"shadow": shadow}

    @app.get(
        "/v1/frames/{id:int}/image",
        operation_id="get_frame_image",
        summary="The frame's image, as the camera sent it",
        response_class=Response,
        responses={
            200: {"content": {f.mime_type: {"schema": _IMAGE_BODY} for f in IMAGE_FORMATS}},
            **documented(InvalidRequestError, *AUTH_ERRORS, FrameNotFoundError, StoreError, not_found=True),
        },
    )
    async def get_frame_image(id: StoreId, s: ServicesDep, _: Reviewer) -> Response:
        frame = await s.store.call("get", id)
        if frame.image_sha256 is None:
            msg = f"frame {id} was stored without its image (retention keeps DEFECTIVE/UNSURE and some OK ones)"
            return JSONResponse({"error": "image_not_kept", "detail": msg}, status_code=404)
        data, fmt = await s.store.call("image", id)
        return Response(content=data, media_type=f"image/{fmt}")

    @app.put(
        "/v1/frames/{id:int}/label",
        operation_id="label_frame",
        response_model=StoredFrameView,
        summary="Label a frame ok or defective",
        responses=documented(InvalidRequestError, InvalidLabelError, *AUTH_ERRORS, FrameNotFoundError, StoreError),
    )
    async def label_frame(id: StoreId, body: LabelRequest, s: ServicesDep, who: Reviewer) -> dict:
        before = await s.store.call("get", id)
        frame = await s.store.call("set_label", id, body.label, body.reviewer)
        if (before.label, before.labelled_by) != (frame.label, frame.labelled_by):
            actor = body.reviewer if who.name == "anonymous" else who.name
            await asyncio.to_thread(
                s.audit.append,
                "label",
                actor=actor,
                subject=f"frame {id} ({frame.camera_id}/{frame.frame_id})",
                before=before.label,
                after={"label": frame.label, "reviewer": body.reviewer},
            )
        return frame_view(frame)

    @app.get(
        "/v1/model",
        response_model=ModelInfo,
        summary="The model being served",
        responses=documented(*AUTH_ERRORS, NotReadyError),
    )
    async def model(s: ServicesDep, _: Reader) -> dict:
        follower = s.frames.follower
        info = await s.describe_model(follower.require_ready())
        return info | {"shadow_version": follower.shadow.version if follower.shadow else None}

    app.openapi = lambda: _openapi(app)
    return app


_FRAME_ROUTES = ("/v1/frames", "/v1/frames/batch")
_REQUIRED_IDS = ("line_id", "camera_id")


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, minus the 422 validation responses it adds by default: ours are 400 (see ERRORS)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):
                    del responses["422"]
                for parameter in operation.get("parameters", []):
                    if path in _FRAME_ROUTES and parameter["in"] == "query" and parameter["name"] in _REQUIRED_IDS:
                        parameter["required"] = True  # or as a header or form field: see the description
                if operation.get("parameters") or "requestBody" in operation:
                    responses.setdefault(
                        "400",
                        {
                            "description": "`invalid_request`: malformed ids, parameters or body",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                        },
                    )
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
