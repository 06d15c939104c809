"""The inspection routes: frames in, verdicts out, stored frames, labels, the model, and the probes.

    POST /v1/frames               [frames:write] one encoded image (raw body or multipart) -> verdict
    POST /v1/frames/batch         [frames:write] several images (multipart) -> verdicts
    GET  /v1/frames               [read]   stored frames, filtered, least sure first
    GET  /v1/frames/{id}          [read]   one stored frame (with any shadow verdicts)
    GET  /v1/frames/{id}/image    [review] its image, when retention kept it
    PUT  /v1/frames/{id}/label    [review] {"label": "ok" | "defective", "reviewer": "..."}
    GET  /v1/model                [read]   the model being served
    GET  /healthz  GET /readyz  GET /metrics   open: probes and Prometheus

Each route is a few lines: the work is in ``serving.judging`` (judging, idempotency, the outbox) and
the frame store; errors are raised and turned into responses by the table in ``serving.http``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from inspectline.errors import (
    FrameIdConflictError,
    FrameNotFoundError,
    InspectError,
    InvalidLabelError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
    RequestError,
    StoreError,
)
from inspectline.ids import ID_PATTERN
from inspectline.imaging import IMAGE_FORMATS, IMAGE_MIME_TYPES, probe_image
from inspectline.serving.http import (
    AUTH_ERRORS,
    BODY_ERRORS,
    IMAGE_ERRORS,
    Reader,
    Reviewer,
    ServicesDep,
    StoreId,
    Writer,
    documented,
    error_spec,
)
from inspectline.serving.records import ErrorObservation
from inspectline.serving.schemas import (
    BatchItem,
    BatchResponse,
    FrameList,
    Health,
    LabelRequest,
    ModelInfo,
    Readiness,
    StoredFrameDetail,
    StoredFrameView,
    Verdict,
    frame_view,
    verdict_of,
)
from inspectline.serving.uploads import (
    MULTIPART,
    FilePart,
    MetaSources,
    batch_sources,
    build_meta,
    content_type_of,
    meta_parameters,
    meta_sources,
    parse_multipart,
    read_body,
)
from inspectline.store import ORDERS, VERDICTS
from inspectline.timeparse import SINCE_FORMS, parse_since

router = APIRouter()
IMAGE_TYPES = tuple(f.mime_type for f in IMAGE_FORMATS)
MAX_OFFSET = 10_000_000

Since = Annotated[
    str | None,
    Query(
        max_length=40,
        description=f"at or after (until: before): {SINCE_FORMS}",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "enum": ["last-week", "yesterday", "today"]},
                {"type": "string", "pattern": r"^[1-9][0-9]{0,3}[wdhm]$"},
            ]
        },
    ),
]


@dataclass(frozen=True)
class Listing:
    """What every listing route takes alike: a ``[since, until)`` time range, a line, and a page."""

    since: datetime | None
    until: datetime | None
    line: str | None
    limit: int
    offset: int


async def listing(
    since: Since = None,
    until: Since = None,
    line: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Listing:
    """The shared listing parameters, validated and parsed once for ``GET /v1/frames`` and ``GET /v1/parts``."""
    return Listing(
        since=parse_since(since, name="since") if since is not None else None,
        until=parse_since(until, name="until") if until is not None else None,
        line=line,
        limit=limit,
        offset=offset,
    )


ListingDep = Annotated[Listing, Depends(listing)]

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


@router.get("/healthz", summary="Liveness: the gateway answers", response_model=Health)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: a model is loaded and warmed",
    response_model=Readiness,
    responses=documented(NotReadyError),
)
async def readyz(s: ServicesDep) -> dict:
    return {"status": "ready", "model_version": s.frames.follower.require_ready().version}


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format), line-wide",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(s: ServicesDep) -> Response:
    await s.frames.outbox.flush()  # include every verdict this gateway has answered so far
    body, content_type = await s.render_metrics()
    return Response(content=body, media_type=content_type)


@router.post(
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
        "parameters": meta_parameters(frame_id=True),
        "requestBody": {
            "required": True,
            "content": {
                **{t: {"schema": _IMAGE_BODY} for t in IMAGE_TYPES},
                MULTIPART: {
                    "schema": {"type": "object", "required": ["image"], "properties": {"image": _IMAGE_BODY}},
                    "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
                },
            },
        },
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


@router.post(
    "/v1/frames/batch",
    response_model=BatchResponse,
    summary="Judge several frames",
    description="multipart/form-data with one file part per image (field name `files`). Frame ids are "
    "generated, never taken from file names, unless the client names a frame with an `X-Frame-Id` header on "
    "its file part (`curl -F 'files=@a.png;headers=\"X-Frame-Id: cam3-000187\"'`). Each file gets its own "
    "result and status, as if posted alone." + _META_ELSEWHERE,
    responses=documented(*AUTH_ERRORS, *BODY_ERRORS, NotReadyError, OverloadedError),
    openapi_extra={
        "parameters": meta_parameters(frame_id=False),
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
        },
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


@router.get(
    "/v1/frames",
    response_model=FrameList,
    summary="Stored frames, filtered; least sure first",
    responses={200: {"links": _FRAME_LINKS}, **documented(InvalidRequestError, *AUTH_ERRORS, StoreError)},
)
async def list_frames(
    s: ServicesDep,
    _: Reader,
    page: ListingDep,
    camera: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    verdict: Annotated[Literal[VERDICTS] | None, Query(description="OK, DEFECTIVE or UNSURE")] = None,  # type: ignore[valid-type]
    labelled: Annotated[bool | None, Query(description="true: reviewed only; false: still to review")] = None,
    has_image: Annotated[bool | None, Query(description="true: only frames whose image was kept")] = None,
    order: Annotated[Literal[ORDERS], Query(description="least sure first, newest or oldest")] = "uncertainty",  # type: ignore[valid-type]
) -> dict:
    filters = {
        "since": page.since,
        "until": page.until,
        "line": page.line,
        "camera": camera,
        "verdict": verdict,
        "labelled": labelled,
        "has_image": has_image,
    }
    frames = await s.store.call("query", **filters, order=order, limit=page.limit, offset=page.offset)
    total = await s.store.call("count", **filters)
    return {"frames": [frame_view(f) for f in frames], "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
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


@router.get(
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


@router.put(
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


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    summary="The model being served",
    responses=documented(*AUTH_ERRORS, NotReadyError),
)
async def model(s: ServicesDep, _: Reader) -> dict:
    follower = s.frames.follower
    info = await s.describe_model(follower.require_ready())
    pending = follower.pending
    return info | {
        "shadow_version": follower.shadow.version if follower.shadow else None,
        "switching_to": str(pending[0]) if pending else None,
        "switching_at": datetime.fromtimestamp(pending[1], timezone.utc) if pending else None,
    }
