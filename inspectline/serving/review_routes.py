"""The review station's frame routes: who is signed in, the line view, heatmaps, undo, the threshold what-if.

    GET    /v1/session               [read]   the caller's token name and scopes: what the page may offer
    GET    /v1/lines                 [read]   per line and camera: latest frames, throughput, defect share, drift
    GET    /v1/frames/{id}/heatmap   [review] PNG overlay of the frame's heatmap (?raw=true: the 16-bit map)
    DELETE /v1/frames/{id}/label     [review] take a label back (the review queue's undo); audited
    GET    /v1/whatif                [review] a window's labelled frames at a proposed threshold / UNSURE band

Heatmaps are computed by the heatmap worker (``serving.heatmaps``), never here: the gateway checks the
frame and awaits the worker. The line view and the what-if each run in one worker thread against the
store (``serving.review``). Models and operating points are in ``serving.model_routes``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from inspectline.errors import (
    FrameNotFoundError,
    InvalidImageError,
    InvalidRequestError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    StoreError,
)
from inspectline.ids import ID_PATTERN
from inspectline.serving.http import AUTH_ERRORS, Reader, Reviewer, Services, ServicesDep, StoreId, documented
from inspectline.serving.model_book import VERSION_PATTERN
from inspectline.serving.review import ReviewServices, line_summary, whatif_report
from inspectline.serving.review_schemas import LineSummary, Session, WhatIfReport
from inspectline.serving.routes import Since
from inspectline.serving.schemas import StoredFrameView, frame_links, frame_view
from inspectline.store import StoredFrame
from inspectline.timeparse import parse_since

log = logging.getLogger("ray.serve")
router = APIRouter()
_PNG = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
Reviewer_ = Annotated[str, Query(min_length=1, max_length=200, pattern=r"\S", description="who takes it back")]


async def _review(request: Request) -> ReviewServices:
    review = request.app.state.services.review
    if review is None:
        msg = "this gateway runs without the review station (no heatmap worker or model book was wired in)"
        raise NotReadyError(msg)
    return review


ReviewDep = Annotated[ReviewServices, Depends(_review)]


@router.get(
    "/v1/session",
    response_model=Session,
    summary="Who the token belongs to, and what it may do",
    responses=documented(*AUTH_ERRORS),
)
async def session(s: ServicesDep, who: Reader) -> dict:
    return {
        "name": who.name,
        "scopes": sorted(who.scopes),
        "may_review": "review" in who.scopes,
        "may_admin": "admin" in who.scopes,
        "auth": s.tokens.enabled,
    }


@router.get(
    "/v1/lines",
    response_model=LineSummary,
    summary="The line view: per line and camera, the latest frames, throughput, defect share and drift",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, StoreError, NotReadyError),
)
async def lines(
    s: ServicesDep,
    _: Reader,
    review: ReviewDep,
    line: Annotated[str | None, Query(pattern=ID_PATTERN, description="one line only")] = None,
    latest: Annotated[int, Query(ge=1, le=50, description="newest frames per camera")] = 6,
) -> dict:
    monitor = "ok"
    try:
        live = await review.line_status()
    except Exception as exc:  # noqa: BLE001 - the store's half of the view is still worth showing
        log.warning("the line monitor did not answer for the line view: %s", exc)
        live, monitor = [], "unavailable"
    store = await s.store.store()
    now = datetime.now(timezone.utc)
    streams = await asyncio.to_thread(line_summary, store, live, now=now, latest=latest, line=line, view=_live_view)
    active = s.frames.follower.active
    return {
        "generated_at": now,
        "served_version": active.version if active else None,
        "monitor": monitor,
        "streams": streams,
    }


def _live_view(frame: StoredFrame) -> dict[str, Any]:
    return frame_view(frame) | {"heatmap_url": frame_links(frame)["heatmap_url"]}


@router.get(
    "/v1/frames/{id:int}/heatmap",
    operation_id="get_frame_heatmap",
    summary="The frame's heatmap: where the model saw evidence for DEFECTIVE",
    description="A PNG of the heatmap over the frame (red: evidence for DEFECTIVE), computed with the model "
    "version that judged the frame, its preprocessing and TTA views; `raw=true` gives the map itself as a "
    "16-bit gray PNG (65535: the frame's strongest evidence). Computed on first request by the heatmap worker "
    "(about a second on a CPU), then cached beside the image.",
    response_class=Response,
    responses={
        **_PNG,
        **documented(
            InvalidRequestError,
            *AUTH_ERRORS,
            FrameNotFoundError,
            ModelNotFoundError,
            InvalidImageError,
            StoreError,
            NotReadyError,
            OverloadedError,
            not_found=True,
        ),
    },
)
async def get_frame_heatmap(
    id: StoreId,
    s: ServicesDep,
    _: Reviewer,
    review: ReviewDep,
    raw: Annotated[bool, Query(description="the 16-bit map instead of the overlay")] = False,
) -> Response:
    frame = await s.store.call("get", id)
    if frame.image_sha256 is None:
        msg = f"frame {id} was stored without its image, so it has no heatmap (retention keeps DEFECTIVE/UNSURE)"
        return JSONResponse({"error": "image_not_kept", "detail": msg}, status_code=404)
    png = await review.heatmap(frame, "raw" if raw else "overlay")
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.delete(
    "/v1/frames/{id:int}/label",
    operation_id="unlabel_frame",
    response_model=StoredFrameView,
    summary="Take a frame's label back: it is unlabelled again (the review queue's undo)",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, FrameNotFoundError, StoreError),
)
async def unlabel_frame(id: StoreId, s: ServicesDep, who: Reviewer, reviewer: Reviewer_) -> dict:
    before = await s.store.call("get", id)
    frame = await s.store.call("clear_label", id)
    if before.label is not None:
        await asyncio.to_thread(
            s.audit.append,
            "label",
            actor=reviewer if who.name == "anonymous" else who.name,
            subject=f"frame {id} ({frame.camera_id}/{frame.frame_id})",
            before={"label": before.label, "reviewer": before.labelled_by},
            after=None,
            reason=f"taken back by {reviewer}",
        )
    return frame_view(frame)


@router.get(
    "/v1/whatif",
    response_model=WhatIfReport,
    summary="What a threshold and UNSURE band would have done to the labelled frames of a window",
    description="Scores the labelled frames of the window (by default those judged by the version being served) "
    "at the proposed operating point, at the one in force, and over a sweep of thresholds at the proposed band. "
    "Recall counts UNSURE defective frames as caught (they are held for review).",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, ModelNotFoundError, StoreError, NotReadyError),
)
async def whatif(
    s: ServicesDep,
    _: Reviewer,
    review: ReviewDep,
    threshold: Annotated[float | None, Query(gt=0, lt=1, description="default: the threshold in force")] = None,
    unsure_band: Annotated[float | None, Query(ge=0, lt=0.5, description="default: the band in force")] = None,
    since: Since = None,
    until: Since = None,
    line: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    camera: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    model_version: Annotated[
        str | None, Query(pattern=VERSION_PATTERN, description="default: the version being served")
    ] = None,
) -> dict:
    version = model_version or s.frames.follower.require_ready().version
    current = await operating_point_in_force(s, review, version)
    window = {
        "since": parse_since(since, name="since") if since is not None else None,
        "until": parse_since(until, name="until") if until is not None else None,
        "line": line,
        "camera": camera,
        "model_version": version,
    }
    store = await s.store.store()
    report = await asyncio.to_thread(
        whatif_report,
        store,
        threshold=threshold if threshold is not None else current[0],
        unsure_band=unsure_band if unsure_band is not None else current[1],
        current=current,
        filters=window,
    )
    return report | {"model_version": version, "window": {k: v for k, v in window.items() if v is not None}}


async def operating_point_in_force(s: Services, review: ReviewServices, version: str) -> tuple[float, float]:
    """(threshold, UNSURE band) judging ``version``'s frames now: the served one as the inspectors apply it
    (their user_config may override the threshold), another version by its registry entry."""
    active = s.frames.follower.active
    if active is not None and version == active.version:
        served = await s.describe_model(active)
        return float(served["threshold"]), float(served["unsure_band"])
    return await asyncio.to_thread(review.models.in_force, version)
