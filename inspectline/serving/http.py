"""The service's HTTP plumbing, without Ray: the one error table, auth, and the app factory.

    app = create_app(services, routes.router)   # the gateway passes Ray-backed services; tests pass fakes

Errors: every exception becomes ``{"error": code, "detail": message}`` through :data:`ERRORS`, one table
from exception type to status, code and description (the most specific class wins); :func:`documented`
writes the same table into each route's OpenAPI responses, so the document cannot drift from behaviour.
Routes live in ``serving.routes`` (frames, model, probes) and ``serving.line_routes`` (parts, audit);
request bodies and frame metadata are read in ``serving.uploads``; response models are in
``serving.schemas``. Every route reaches the services through the ``ServicesDep`` dependency and its
caller's scope through ``Writer``/``Reader``/``Reviewer``/``Admin``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from inspectline.audit import AuditError, AuditLog
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
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PartNotFoundError,
    PayloadTooLargeError,
    RequestError,
    StoreError,
    UnauthorizedError,
    UndecodableImageError,
    UnsupportedImageError,
    UnsupportedMediaTypeError,
)
from inspectline.serving.auth import Principal, TokenTable
from inspectline.serving.judging import FrameService, StoreAccess
from inspectline.serving.records import ErrorObservation, ServedModel

if TYPE_CHECKING:
    from inspectline.serving.review import ReviewServices

log = logging.getLogger("ray.serve")
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
    PartNotFoundError: ErrorSpec(404, "part_not_found", "no part verdict is stored for this part id"),
    ModelNotFoundError: ErrorSpec(404, "model_not_found", "no registered model version has this name"),
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
    AuditError: ErrorSpec(503, "audit_unavailable", "the audit trail cannot be read"),
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
    if isinstance(exc, RequestValidationError) and all(e["loc"][-1] == "label" for e in exc.errors()):
        spec = ERRORS[InvalidLabelError]  # a label outside ok/defective is a labelling mistake, whatever caught it
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
    review: ReviewServices | None = None  # the review station's heatmaps, line status and models (serving.review)


# --- request parts: auth, body, frame metadata ----------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>; see `inspect tokens add`")


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers whose token carries ``scope``."""

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Principal:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        return request.app.state.services.tokens.authorize(header, scope)

    return check


async def _services(request: Request) -> Services:
    # async although it does not wait: FastAPI runs a plain function dependency on a worker thread,
    # a hand-off per request for a dictionary lookup
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]
Writer = Annotated[Principal, Depends(require("frames:write"))]
Reader = Annotated[Principal, Depends(require("read"))]
Reviewer = Annotated[Principal, Depends(require("review"))]
Admin = Annotated[Principal, Depends(require("admin"))]
StoreId = Annotated[int, Path(ge=0, le=MAX_STORE_ID, description="the stored frame's id (from GET /v1/frames)")]


def create_app(services: Services, *routers: APIRouter) -> FastAPI:
    """The FastAPI app of one gateway replica: the error handlers and the given routers."""
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
            headers["Allow"] = ", ".join(_allowed_methods(routers, request.scope))
        return JSONResponse({"error": code, "detail": str(exc.detail)}, exc.status_code, headers=headers)

    for router in routers:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)
    return app


def _allowed_methods(routers: Sequence[APIRouter], scope: dict) -> list[str]:
    """Every method of every route whose path (with its converters) matches the request's path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    methods = {m for router in routers for r in router.routes if r.path_regex.match(path) for m in r.methods}
    return sorted(methods)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, minus the 422 validation responses it adds by default: ours are 400 (see ERRORS)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in str(responses.get("422", "")):
                    del responses["422"]
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
