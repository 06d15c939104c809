"""The review station's model routes: versions, their reports and history, and committing an operating point.

    GET  /v1/models                                   [read]  production, shadow, versions, recent history
    GET  /v1/models/{version}                         [read]  card, metrics, operating points, exports and their
                                                              parity, lineage, the evaluation report as HTML
    GET  /v1/models/{version}/report/{file}           [read]  a plot or gallery image of that report
    POST /v1/models/{version}/operating-points        [admin] put a threshold / UNSURE band in force

An operating point goes through ``ModelRegistry.set_operating_point`` (the path ``inspect models`` uses:
recorded in the version's manifest and the audit trail), with the rates it is expected to give read from
the what-if window it was chosen on. The running service rolls it out like a promotion: the model
follower sees it, every inspector replica warms it, then it judges the next frame.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from inspectline.errors import InvalidRequestError, ModelNotFoundError, NotReadyError, StoreError
from inspectline.registry import OperatingPoint
from inspectline.serving.http import AUTH_ERRORS, Admin, Reader, ServicesDep, documented
from inspectline.serving.model_book import REPORT_MEDIA, REPORT_PATH, VERSION_PATTERN
from inspectline.serving.review_routes import ReviewDep
from inspectline.serving.review_schemas import ModelDetail, ModelsOverview, OperatingPointRequest, OperatingPointView
from inspectline.whatif import what_if_arrays

router = APIRouter()
Version = Annotated[str, Path(pattern=VERSION_PATTERN, description="a registered version, e.g. v0003")]
_EXPECTED = ("recall", "precision", "false_reject_rate", "unsure_share")


@router.get(
    "/v1/models",
    response_model=ModelsOverview,
    summary="Model versions: production, shadow, each version in short, and the promotion history",
    responses=documented(*AUTH_ERRORS, NotReadyError),
)
async def models(s: ServicesDep, _: Reader, review: ReviewDep) -> dict:
    active = s.frames.follower.active
    return await asyncio.to_thread(review.models.overview, active.version if active else None)


@router.get(
    "/v1/models/{version}",
    response_model=ModelDetail,
    summary="One model version: card, metrics, operating points, exports, lineage and its evaluation report",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, ModelNotFoundError, NotReadyError),
)
async def model_version(version: Version, _: Reader, review: ReviewDep) -> dict:
    return await asyncio.to_thread(review.models.version, version)


@router.get(
    "/v1/models/{version}/report/{file:path}",
    summary="A plot or gallery image of a version's evaluation report",
    response_class=FileResponse,
    responses={
        200: {
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in REPORT_MEDIA.values()}
        },
        **documented(InvalidRequestError, *AUTH_ERRORS, ModelNotFoundError, NotReadyError),
    },
)
async def report_file(
    version: Version,
    file: Annotated[str, Path(pattern=REPORT_PATH, description="as the report names it, e.g. roc_pr.png")],
    _: Reader,
    review: ReviewDep,
) -> FileResponse:
    path, media = await asyncio.to_thread(review.models.report_file, version, file)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.post(
    "/v1/models/{version}/operating-points",
    status_code=201,
    response_model=OperatingPointView,
    summary="Put a new operating point (threshold, UNSURE band) in force for a version",
    description="Recorded in the version's manifest and the audit trail, with the rates the what-if window "
    "(`since`, `until`, `line`, `camera`) gives at this point; the service rolls it out like a promotion. "
    "The actor is the token's name (`actor` when the service runs without tokens; it is named in the reason).",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, ModelNotFoundError, StoreError, NotReadyError),
)
async def commit_operating_point(
    version: Version, body: OperatingPointRequest, s: ServicesDep, who: Admin, review: ReviewDep
) -> dict:
    registry = review.models.registry
    name = (await asyncio.to_thread(registry.get, version)).name  # 404 before reading the window
    window = {"since": body.since, "until": body.until, "line": body.line, "camera": body.camera}
    labels, probabilities, _ = await s.store.call("labelled_scores", **window, model_version=name)
    expected = {}
    if labels:
        rates = what_if_arrays(labels, probabilities, body.threshold, body.unsure_band)
        expected = {k: v for k in _EXPECTED if (v := getattr(rates, k)) is not None} | {"frames": float(len(labels))}
    chosen = ", ".join(
        f"{k} {v:%Y-%m-%d %H:%M}" if k in ("since", "until") else f"{k} {v}" for k, v in window.items() if v
    )
    point = OperatingPoint(
        threshold=body.threshold,
        unsure_band=body.unsure_band,
        basis=f"review station what-if on {len(labels)} labelled frames of {name}" + (f" ({chosen})" if chosen else ""),
        expected=expected,
        actor=body.actor if who.name == "anonymous" else who.name,
        reason=f"{body.reason} (chosen by {body.actor})",
    )
    stored = await asyncio.to_thread(registry.set_operating_point, name, point)
    return stored.model_dump(mode="json") | {"version": name}
