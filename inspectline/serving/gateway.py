"""HTTP gateway (FastAPI ingress): checks and decodes frames, routes them to inspector replicas.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

    POST /v1/frames          one encoded image (raw body or multipart) -> verdict
    POST /v1/frames/batch    several images (multipart) -> verdicts
    GET  /v1/frames          review queue: stored frames, filtered, most uncertain first
    GET  /v1/frames/{id}     one stored frame (with any shadow verdicts)
    GET  /v1/frames/{id}/image   its image, when retention kept it
    PUT  /v1/frames/{id}/label   {"label": "ok" | "defective", "reviewer": "..."}
    GET  /v1/model           the model being served
    GET  /healthz            alive
    GET  /readyz             model loaded and warmed (503 until then)
    GET  /metrics            Prometheus text format, line-wide (rendered by the line monitor)

Every error is JSON ``{"error": code, "detail": message}``: 400 missing/invalid fields, 401/403 auth,
413 body too large, 415 unsupported type, 422 undecodable or absurdly large image, 503 with
``Retry-After`` when overloaded or not ready.

Monitoring: every verdict and every error becomes a small record that the gateway sends to the
line monitor in micro-batches off the request path (see ``serving.monitor``). A repeated frame id
is answered from memory and not recorded again.

Model switching: the gateway is the one place that decides which version judges a frame. It polls
the registry's production pointer; on a change it has the inspectors load and warm the new version,
then flips. Frames already being judged finish on the old version; every response names its version.
"""

# No `from __future__ import annotations` here: Ray's class-based ingress re-reads the endpoint
# signatures outside this module, so the Annotated aliases must be real objects, not strings.
import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from inspectline.config import GatewayOptions, StoreConfig
from inspectline.errors import (
    ConfigError,
    FrameNotFoundError,
    InvalidImageError,
    InvalidLabelError,
    ModelNotFoundError,
    StoreError,
)
from inspectline.imaging import decode_image
from inspectline.registry import ModelRegistry
from inspectline.store import FrameStore, StoredFrame
from inspectline.timeparse import parse_since

log = logging.getLogger("ray.serve")

IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
    "image/tif": "TIFF",
}
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
_IMAGE_STATUS = {"unsupported_type": 415, "too_large": 422, "undecodable": 422}
MAX_PENDING_RECORDS = 200_000  # records kept while the line monitor is unreachable (~100 MB)
_IMAGE_CODES = {
    "unsupported_type": "unsupported_media_type",
    "too_large": "image_too_large",
    "undecodable": "undecodable_image",
}


class ApiError(Exception):
    """An HTTP error with our JSON body."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


class FrameMeta(BaseModel):
    """Where a frame comes from; ids are bounded strings so they are safe as metric labels and keys."""

    line_id: str = Field(pattern=ID_PATTERN)
    camera_id: str = Field(pattern=ID_PATTERN)
    part_id: str | None = Field(None, pattern=ID_PATTERN)
    frame_id: str = Field(pattern=ID_PATTERN)
    captured_at: datetime | None = None


class Verdict(BaseModel):
    """The answer to one frame."""

    frame_id: str
    line_id: str
    camera_id: str
    part_id: str | None
    verdict: str = Field(description="OK, DEFECTIVE, or UNSURE within the configured band around the threshold")
    defect_probability: float = Field(description="calibrated probability that the part is defective")
    confidence: float = Field(description="calibrated probability that the OK/DEFECTIVE decision is right")
    threshold: float
    model_version: str
    views: dict[str, float] = Field(description="calibrated defect probability per TTA view")
    latency_ms: float
    captured_at: datetime | None
    received_at: datetime
    duplicate: bool = Field(
        False, description="true when this (camera_id, frame_id) was judged before: the first verdict is returned"
    )


class BatchItem(BaseModel):
    index: int
    filename: str | None
    result: Verdict | None = None
    error: str | None = None
    detail: str | None = None
    status: int = 200


class BatchResponse(BaseModel):
    results: list[BatchItem]


api = FastAPI(
    title="inspectline",
    version="1",
    description="Defect inspection: post frames, get OK / DEFECTIVE verdicts with calibrated confidence.",
)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)}, status_code=400)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": codes.get(exc.status_code, "http_error"), "detail": str(exc.detail)},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in the gateway")
    return JSONResponse({"error": "internal", "detail": f"unexpected error: {type(exc).__name__}"}, status_code=500)


# FastAPI parameters shared by the frame endpoints: each id as a query parameter or an X- header.
LineQ = Annotated[str | None, Query(description="production line id (or header X-Line-Id)")]
CameraQ = Annotated[str | None, Query(description="camera id (or header X-Camera-Id)")]
PartQ = Annotated[str | None, Query(description="part id, when known (or header X-Part-Id)")]
FrameQ = Annotated[str | None, Query(description="frame id, unique per camera; generated when absent (or X-Frame-Id)")]
CapturedQ = Annotated[str | None, Query(description="ISO 8601 capture time (or header X-Captured-At)")]
LineH = Annotated[str | None, Header(alias="X-Line-Id", include_in_schema=False)]
CameraH = Annotated[str | None, Header(alias="X-Camera-Id", include_in_schema=False)]
PartH = Annotated[str | None, Header(alias="X-Part-Id", include_in_schema=False)]
FrameH = Annotated[str | None, Header(alias="X-Frame-Id", include_in_schema=False)]
CapturedH = Annotated[str | None, Header(alias="X-Captured-At", include_in_schema=False)]


# Helpers sit above the deployment class: Ray pickles the class when it is decorated, capturing
# only the module globals that exist at that moment.


class _Slot:
    """Counts a frame against the gateway's in-flight limit for as long as it is judged."""

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    def __enter__(self) -> "_Slot":
        self.gateway.inflight += 1
        return self

    def __exit__(self, *_: object) -> None:
        self.gateway.inflight -= 1


async def _parse_multipart(
    request: Request, body: bytes, *, max_files: int
) -> tuple[list[tuple[str | None, bytes]], dict[str, str]]:
    """Parse an already size-checked multipart body: file parts and plain fields."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=32)
    except Exception as exc:  # noqa: BLE001 - starlette raises several types for malformed bodies
        raise ApiError(400, "invalid_request", f"malformed multipart body: {exc}") from None
    files: list[tuple[str | None, bytes]] = []
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename, await value.read()))
        else:
            fields[key] = value
    return files, fields


def _frame_meta(
    line: str | None, camera: str | None, part: str | None, frame: str | None, captured: str | None
) -> FrameMeta:
    missing = [name for name, value in (("line_id", line), ("camera_id", camera)) if not value]
    if missing:
        raise ApiError(
            400,
            "invalid_request",
            f"missing {', '.join(missing)}: give each as a query parameter (?line_id=...) or header (X-Line-Id)",
        )
    try:
        return FrameMeta(
            line_id=line,
            camera_id=camera,
            part_id=part or None,
            frame_id=frame or uuid.uuid4().hex,
            captured_at=captured or None,
        )
    except ValidationError as exc:
        parts = [f"{e['loc'][0]}={e.get('input')!r}: {e['msg']}" for e in exc.errors()]
        raise ApiError(
            400, "invalid_request", "; ".join(parts) + " (ids: 1-64 letters, digits, _ . : -; captured_at: ISO 8601)"
        ) from None


def _frame_id_from_filename(name: str | None, index: int) -> str:
    stem = Path(name).stem if name else ""
    return stem if stem else f"frame-{index}-{uuid.uuid4().hex[:8]}"


class LabelRequest(BaseModel):
    label: str = Field(description="ok or defective")
    reviewer: str = Field(min_length=1, max_length=200, description="who labelled it (name or e-mail)")


async def _store_call(fn, *args, **kwargs):
    """Run a blocking store call in a thread; store errors become HTTP errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except FrameNotFoundError as exc:
        raise ApiError(404, "frame_not_found", str(exc)) from None
    except InvalidLabelError as exc:
        raise ApiError(400, "invalid_label", str(exc)) from None
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", str(exc), {"Retry-After": "5"}) from None


def _when(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text, name=name)
    except ConfigError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


def _frame_view(frame: StoredFrame) -> dict:
    return frame.to_dict() | {"image_url": f"/v1/frames/{frame.id}/image" if frame.image_sha256 else None}


def _stored_verdict(frame: StoredFrame) -> Verdict:
    return Verdict(
        frame_id=frame.frame_id,
        line_id=frame.line_id,
        camera_id=frame.camera_id,
        part_id=frame.part_id,
        verdict=frame.verdict,
        defect_probability=frame.defect_probability,
        confidence=frame.confidence,
        threshold=frame.threshold,
        model_version=frame.model_version,
        views=frame.views,
        latency_ms=0.0,
        captured_at=frame.captured_at,
        received_at=frame.received_at,
    )


def _frame_record(verdict: Verdict, result: dict, image: bytes) -> dict:
    """What the line monitor needs about one judged frame: metric values and, for the store, the image."""
    return {
        "type": "frame",
        "frame_id": verdict.frame_id,
        "part_id": verdict.part_id,
        "captured_at": verdict.captured_at,
        "received_at": verdict.received_at,
        "image": image,
        "line": verdict.line_id,
        "camera": verdict.camera_id,
        "verdict": verdict.verdict,
        "defect_probability": verdict.defect_probability,
        "confidence": verdict.confidence,
        "threshold": verdict.threshold,
        "model_version": verdict.model_version,
        "views": verdict.views,
        "latency_s": verdict.latency_ms / 1000,
        "inference_s": result["inference_ms"] / 1000,
        "batch_size": result["batch_size"],
        "first_in_batch": result["first_in_batch"],
        "stats": result["stats"],
        "embedding": result["embedding"],
    }


def _verdict(meta: FrameMeta, result: dict, received: float) -> Verdict:
    return Verdict(
        frame_id=meta.frame_id,
        line_id=meta.line_id,
        camera_id=meta.camera_id,
        part_id=meta.part_id,
        verdict=result["verdict"],
        defect_probability=result["defect_probability"],
        confidence=result["confidence"],
        threshold=result["threshold"],
        model_version=result["model_version"],
        views=result["views"],
        latency_ms=(time.perf_counter() - received) * 1000,
        captured_at=meta.captured_at,
        received_at=datetime.now(timezone.utc),
    )


@serve.deployment(name="Gateway", max_ongoing_requests=128)
@serve.ingress(api)
class Gateway:
    async def __init__(self, inspector: DeploymentHandle, monitor: DeploymentHandle, registry: str, store: dict):
        self.inspector = inspector
        self.monitor = monitor
        self.store_config = StoreConfig.model_validate(store)
        self._store: FrameStore | None = None
        self.options = GatewayOptions()
        self.registry = ModelRegistry(Path(registry))
        self.active_version: str | None = None
        self.shadow_version: str | None = None
        self._shadow_tasks: set[asyncio.Task] = set()
        self.not_ready_reason = "the model is loading"
        self.inflight = 0
        self._token: str | None = None
        self._recent: OrderedDict[tuple[str, str], Verdict] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future] = {}
        self._outbox: list[dict] = []
        self._flush_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch_model())
        self._flusher = loop.create_task(self._flush_forever())
        self._warmer = loop.create_task(self._remember_stored_verdicts())

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.options = GatewayOptions.model_validate(user_config or {})
        token = (
            self.options.api_token if self.options.api_token is not None else os.environ.get("INSPECT_API_TOKEN", "")
        )
        self._token = token or None

    # --- endpoints -----------------------------------------------------------------------------
    @api.get("/healthz", summary="Liveness: the gateway answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz", summary="Readiness: a model is loaded and warmed", responses={503: {"description": "not ready"}}
    )
    async def readyz(self) -> dict:
        if self.active_version is None:
            raise ApiError(503, "not_ready", self.not_ready_reason, {"Retry-After": str(self.options.retry_after_s)})
        return {"status": "ready", "model_version": self.active_version}

    @api.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
    async def metrics(self) -> Response:
        await self._flush()  # include every verdict this gateway has answered so far
        body, content_type = await self.monitor.render.remote()
        return Response(content=body, media_type=content_type)

    @api.get("/v1/frames", summary="Review queue: stored frames, most uncertain first")
    async def list_frames(
        self,
        since: Annotated[
            str | None, Query(description="ISO date/time or a duration back from now (36h, 7d, last-week)")
        ] = None,
        until: Annotated[str | None, Query()] = None,
        line: Annotated[str | None, Query()] = None,
        camera: Annotated[str | None, Query()] = None,
        verdict: Annotated[str | None, Query(description="OK, DEFECTIVE or UNSURE")] = None,
        labelled: Annotated[
            bool | None, Query(description="true: reviewed frames only; false: still to review")
        ] = None,
        has_image: Annotated[bool | None, Query(description="true: only frames whose image was kept")] = None,
        order: Annotated[str, Query(description="uncertainty (least sure first), newest or oldest")] = "uncertainty",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict:
        with self._counting_errors():
            self._authorize(authorization)
            filters = {
                "since": _when(since, "since"),
                "until": _when(until, "until"),
                "line": line,
                "camera": camera,
                "verdict": verdict.upper() if verdict else None,
                "labelled": labelled,
                "has_image": has_image,
            }
            store = await self._store_or_503()
            frames = await _store_call(store.query, **filters, order=order, limit=limit, offset=offset)
            total = await _store_call(store.count, **filters)
            return {"frames": [_frame_view(f) for f in frames], "total": total, "limit": limit, "offset": offset}

    @api.get("/v1/frames/{frame_id}", summary="One stored frame, with the shadow model's verdicts if any")
    async def get_frame(self, frame_id: int, authorization: Annotated[str | None, Header()] = None) -> dict:
        with self._counting_errors():
            self._authorize(authorization)
            store = await self._store_or_503()
            frame = await _store_call(store.get, frame_id)
            shadows = await _store_call(store.shadow_verdicts, frame_id)
            return _frame_view(frame) | {
                "shadow": [
                    {"model_version": v.model_version, "verdict": v.verdict, "defect_probability": v.defect_probability}
                    for v in shadows
                ]
            }

    @api.get("/v1/frames/{frame_id}/image", summary="The frame's image, as the camera sent it", response_class=Response)
    async def get_frame_image(self, frame_id: int, authorization: Annotated[str | None, Header()] = None) -> Response:
        with self._counting_errors():
            self._authorize(authorization)
            store = await self._store_or_503()
            frame = await _store_call(store.get, frame_id)
            if frame.image_sha256 is None:
                raise ApiError(
                    404,
                    "image_not_kept",
                    f"frame {frame_id} was stored without its image (retention keeps DEFECTIVE/UNSURE "
                    "images and a sample of OK ones)",
                )
            data, fmt = await _store_call(store.image, frame_id)
            return Response(content=data, media_type=f"image/{fmt}")

    @api.put("/v1/frames/{frame_id}/label", summary="Label a stored frame ok or defective")
    async def label_frame(
        self, frame_id: int, body: LabelRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict:
        with self._counting_errors():
            self._authorize(authorization)
            store = await self._store_or_503()
            return _frame_view(await _store_call(store.set_label, frame_id, body.label, body.reviewer))

    @api.get("/v1/model", summary="The model being served")
    async def model(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        with self._counting_errors():
            self._authorize(authorization)
            version = self._require_ready()
            return await self.inspector.describe.remote(version)

    @api.post(
        "/v1/frames",
        response_model=Verdict,
        summary="Judge one frame",
        description="Body: the encoded image (PNG, JPEG, BMP or TIFF) or multipart/form-data with one file.",
        openapi_extra={
            "requestBody": {
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/jpeg", "image/bmp", "image/tiff")
                },
                "required": True,
            }
        },
    )
    async def post_frame(
        self,
        request: Request,
        line_id: LineQ = None,
        camera_id: CameraQ = None,
        part_id: PartQ = None,
        frame_id: FrameQ = None,
        captured_at: CapturedQ = None,
        x_line_id: LineH = None,
        x_camera_id: CameraH = None,
        x_part_id: PartH = None,
        x_frame_id: FrameH = None,
        x_captured_at: CapturedH = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Verdict:
        with self._counting_errors():
            received = time.perf_counter()
            self._authorize(authorization)
            body, content_type = await self._read_body(request)
            fields: dict[str, str | None] = {}
            if content_type == "multipart/form-data":
                files, fields = await _parse_multipart(request, body, max_files=1)
                if len(files) != 1:
                    raise ApiError(
                        400, "invalid_request", f"multipart body must hold exactly one image file, got {len(files)}"
                    )
                data = files[0][1]
            else:
                data = body
            meta = _frame_meta(
                line_id or x_line_id or fields.get("line_id"),
                camera_id or x_camera_id or fields.get("camera_id"),
                part_id or x_part_id or fields.get("part_id"),
                frame_id or x_frame_id or fields.get("frame_id"),
                captured_at or x_captured_at or fields.get("captured_at"),
            )
            return await self._judge_once(
                meta, data, received, explicit_id=bool(frame_id or x_frame_id or fields.get("frame_id"))
            )

    @api.post(
        "/v1/frames/batch",
        response_model=BatchResponse,
        summary="Judge several frames",
        description="multipart/form-data, one file part per image; a file's name (no extension) is its frame id.",
    )
    async def post_batch(
        self,
        request: Request,
        line_id: LineQ = None,
        camera_id: CameraQ = None,
        part_id: PartQ = None,
        captured_at: CapturedQ = None,
        x_line_id: LineH = None,
        x_camera_id: CameraH = None,
        x_part_id: PartH = None,
        x_captured_at: CapturedH = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> BatchResponse:
        with self._counting_errors():
            received = time.perf_counter()
            self._authorize(authorization)
            body, _ = await self._read_body(request, multipart_only=True)
            files, fields = await _parse_multipart(request, body, max_files=self.options.max_batch_files)
            if not files:
                raise ApiError(400, "invalid_request", "multipart body holds no image files")
            line, camera = (
                line_id or x_line_id or fields.get("line_id"),
                camera_id or x_camera_id or fields.get("camera_id"),
            )
            part, captured = (
                part_id or x_part_id or fields.get("part_id"),
                captured_at or x_captured_at or fields.get("captured_at"),
            )
            metas = [
                _frame_meta(line, camera, part, _frame_id_from_filename(name, i), captured)
                for i, (name, _) in enumerate(files)
            ]
            if len({m.frame_id for m in metas}) != len(metas):
                raise ApiError(
                    400, "invalid_request", "two files in the batch have the same name; file names are the frame ids"
                )
            self._require_ready()

        async def one(i: int, name: str | None, data: bytes) -> BatchItem:
            try:
                verdict = await self._judge_once(
                    metas[i], data, received, explicit_id=bool(name), name=name or f"file {i}"
                )
                return BatchItem(index=i, filename=name, result=verdict)
            except ApiError as exc:
                self._outbox.append({"type": "error", "reason": exc.code})
                return BatchItem(index=i, filename=name, error=exc.code, detail=exc.detail, status=exc.status)

        items = await asyncio.gather(*(one(i, name, data) for i, (name, data) in enumerate(files)))
        return BatchResponse(results=list(items))

    # --- helpers -------------------------------------------------------------------------------
    async def _judge_once(
        self, meta: FrameMeta, data: bytes, received: float, *, explicit_id: bool, name: str = "image"
    ) -> Verdict:
        """Judge a frame unless this camera already sent this frame id: then answer the first verdict.

        A retry that arrives while the first attempt is still being judged waits for that verdict,
        so a frame is judged and counted once however often a camera resends it.
        """
        key = (meta.camera_id, meta.frame_id)
        if explicit_id:
            if key in self._recent:
                return self._recent[key].model_copy(update={"duplicate": True})
            if key in self._pending:
                first = await asyncio.shield(self._pending[key])
                return first.model_copy(update={"duplicate": True})
        version = self._require_ready()
        frame = self._decode(data, name=name)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if explicit_id:
            self._pending[key] = future
        try:
            with self._slot():
                result = await self._judge(frame, version)
            verdict = _verdict(meta, result, received)
            future.set_result(verdict)
            self._outbox.append(_frame_record(verdict, result, data))
            self._shadow(frame, verdict)
            if explicit_id and self.options.recent_frames:
                self._recent[key] = verdict
                while len(self._recent) > self.options.recent_frames:
                    self._recent.popitem(last=False)
            return verdict
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            future.exception()  # retrieved here: no "never retrieved" warning when nobody waited
            raise
        finally:
            if explicit_id:
                self._pending.pop(key, None)

    def _shadow(self, frame: np.ndarray, verdict: Verdict) -> None:
        """Have the shadow model judge the frame too, in the background; its answer never reaches the line."""
        shadow = self.shadow_version
        if shadow is None or shadow == verdict.model_version:
            return
        if len(self._shadow_tasks) >= self.options.max_inflight:  # production traffic comes first
            self._outbox.append({"type": "shadow_skipped"})
            return
        task = asyncio.get_running_loop().create_task(self._judge_shadow(frame, verdict, shadow))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _judge_shadow(self, frame: np.ndarray, verdict: Verdict, shadow: str) -> None:
        try:
            result = await self.inspector.judge.remote(frame, shadow)
        except Exception as exc:  # noqa: BLE001 - a failing shadow must not disturb production
            log.warning("shadow model %s failed on frame %s: %s", shadow, verdict.frame_id, exc)
            return
        if "error" not in result:
            self._outbox.append(
                {
                    "type": "shadow",
                    "line": verdict.line_id,
                    "camera": verdict.camera_id,
                    "camera_id": verdict.camera_id,
                    "frame_id": verdict.frame_id,
                    "version": result["model_version"],
                    "verdict": result["verdict"],
                    "defect_probability": result["defect_probability"],
                    "production_verdict": verdict.verdict,
                    "received_at": verdict.received_at,
                }
            )

    async def _store_or_503(self) -> FrameStore:
        """The frame store, opened on first use; 503 while it cannot be reached."""
        if self._store is None:
            try:
                self._store = await asyncio.to_thread(FrameStore, self.store_config)
            except StoreError as exc:
                raise ApiError(
                    503, "store_unavailable", str(exc), {"Retry-After": str(self.options.retry_after_s)}
                ) from None
        return self._store

    async def _remember_stored_verdicts(self) -> None:
        """After a restart, answer resent frame ids from the store's newest verdicts, not by judging again."""
        if not self.options.recent_frames:
            return
        try:
            store = await self._store_or_503()
            stored = await asyncio.to_thread(store.recent, self.options.recent_frames)
        except (ApiError, StoreError) as exc:
            log.warning("could not read recent verdicts from the frame store: %s", exc)
            return
        for frame in reversed(stored):  # oldest first, so the newest stay in the bounded cache
            key = (frame.camera_id, frame.frame_id)
            if key not in self._recent:
                self._recent[key] = _stored_verdict(frame)
        while len(self._recent) > self.options.recent_frames:
            self._recent.popitem(last=False)
        log.info("remembered %d stored verdicts for repeated frame ids", len(stored))

    @contextlib.contextmanager
    def _counting_errors(self):
        """Record an API error (by its code) for the line monitor, then let it reach the client."""
        try:
            yield
        except ApiError as exc:
            self._outbox.append({"type": "error", "reason": exc.code})
            raise

    async def _flush(self) -> None:
        """Send the pending records to the line monitor; on failure keep them for the next try."""
        async with self._flush_lock:
            if not self._outbox:
                return
            batch, self._outbox = self._outbox, []
            try:
                await self.monitor.observe.remote(batch)
            except Exception as exc:  # noqa: BLE001 - the monitor may be restarting; the line must not notice
                self._outbox = batch + self._outbox
                overflow = len(self._outbox) - MAX_PENDING_RECORDS
                if overflow > 0:
                    del self._outbox[:overflow]
                    log.error("line monitor unreachable (%s); dropped the %d oldest metric records", exc, overflow)
                else:
                    log.warning(
                        "line monitor unreachable (%s); %d records kept for the next try", exc, len(self._outbox)
                    )

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.monitor_flush_s)
            await self._flush()

    def _authorize(self, authorization: str | None) -> None:
        if self._token is None:
            return
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "this endpoint needs 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token.encode()):
            raise ApiError(403, "forbidden", "the bearer token is not valid for this service")

    def _require_ready(self) -> str:
        if self.active_version is None:
            raise ApiError(503, "not_ready", self.not_ready_reason, {"Retry-After": str(self.options.retry_after_s)})
        return self.active_version

    async def _read_body(self, request: Request, *, multipart_only: bool = False) -> tuple[bytes, str]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        accepted = {"multipart/form-data"} if multipart_only else {*IMAGE_TYPES, "multipart/form-data"}
        if content_type not in accepted:
            shown = (
                "multipart/form-data"
                if multipart_only
                else "image/png, image/jpeg, image/bmp, image/tiff or multipart/form-data"
            )
            raise ApiError(
                415, "unsupported_media_type", f"Content-Type {content_type or '(none)'!r} is not accepted; use {shown}"
            )
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, "payload_too_large", f"body of {int(declared):,} bytes exceeds the limit of {limit:,} bytes"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "payload_too_large", f"body exceeds the limit of {limit:,} bytes")
        if not body:
            raise ApiError(400, "invalid_request", "the request body is empty; send the encoded image")
        return bytes(body), content_type

    def _decode(self, data: bytes, name: str = "image") -> np.ndarray:
        try:
            return decode_image(data, max_pixels=self.options.max_pixels, name=name)
        except InvalidImageError as exc:
            raise ApiError(_IMAGE_STATUS[exc.code], _IMAGE_CODES[exc.code], str(exc)) from None

    def _slot(self) -> "_Slot":
        if self.inflight >= self.options.max_inflight:
            raise ApiError(
                503,
                "overloaded",
                f"{self.inflight} frames are being judged (limit {self.options.max_inflight}); retry shortly",
                {"Retry-After": str(self.options.retry_after_s)},
            )
        return _Slot(self)

    async def _judge(self, frame: np.ndarray, version: str) -> dict:
        try:
            result = await self.inspector.judge.remote(frame, version)
        except BackPressureError:
            raise ApiError(
                503,
                "overloaded",
                "the inspectors' queues are full; retry shortly",
                {"Retry-After": str(self.options.retry_after_s)},
            ) from None
        if "error" in result:
            status = 503 if result["error"] == "model_unavailable" else 422
            headers = {"Retry-After": str(self.options.retry_after_s)} if status == 503 else None
            raise ApiError(status, result["error"], result["detail"], headers)
        return result

    async def _watch_model(self) -> None:
        """Follow the configured model reference; switch only once the inspectors have it warm."""
        while True:
            try:
                shadow = self.registry.shadow()
                if shadow != self.shadow_version:
                    if shadow is not None:
                        await self.inspector.prepare.remote(shadow)
                    log.info("shadow model: %s (was %s)", shadow, self.shadow_version)
                    self.shadow_version = shadow
                target = self._target_version()
                if target != self.active_version:
                    # Several concurrent prepares reach most replicas; any replica still missing the
                    # version loads it on its first frame, so correctness never depends on this.
                    await asyncio.gather(*(self.inspector.prepare.remote(target) for _ in range(4)))
                    log.info("serving model %s (was %s)", target, self.active_version)
                    self.active_version = target
            except ModelNotFoundError as exc:
                self.not_ready_reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - keep serving the current version; retry next poll
                self.not_ready_reason = f"model could not be loaded: {exc}"
                log.warning("model switch failed: %s", exc)
            await asyncio.sleep(self.options.reload_interval_s)

    def _target_version(self) -> str:
        return self.registry.resolve(self.options.model).parent.name  # production, latest or vNNNN
