"""The line's routes: part verdicts as the line was told them, and the audit trail.

    GET /v1/parts               [read]  part verdicts, filtered, newest first
    GET /v1/parts/{part_id}     [read]  every station's verdict on one part, with its views (and links to
                                        each view's frame, image and heatmap)
    GET /v1/audit               [admin] the audit trail: who changed what affects verdicts, and when

Part verdicts are decided by the line monitor (``outputs.line.LineResults``) and stored in the frame
store's ``parts`` table; these routes only read them. The listing takes the same time range, line and
page parameters as ``GET /v1/frames`` (``routes.listing``), where ``since`` and ``until`` bound the
moment a part was decided.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from inspectline.audit import AuditError
from inspectline.errors import InvalidRequestError, PartNotFoundError, StoreError
from inspectline.ids import ID_PATTERN
from inspectline.serving.http import AUTH_ERRORS, Admin, Reader, Services, ServicesDep, documented
from inspectline.serving.routes import ListingDep, Since
from inspectline.serving.schemas import AuditList, PartDetail, PartList, frame_links
from inspectline.store import PART_VERDICTS, StoredPart
from inspectline.store.parts import PART_ORDERS
from inspectline.timeparse import parse_since

router = APIRouter()
PartId = Annotated[str, Path(pattern=ID_PATTERN, description="the part id the cameras sent with its frames")]


@router.get(
    "/v1/parts",
    response_model=PartList,
    summary="Part verdicts, filtered; newest first",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, StoreError),
)
async def list_parts(
    s: ServicesDep,
    _: Reader,
    page: ListingDep,
    station: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    verdict: Annotated[Literal[PART_VERDICTS] | None, Query(description="OK, DEFECTIVE, UNSURE or NO_RESULT")] = None,  # type: ignore[valid-type]
    order: Annotated[Literal[PART_ORDERS], Query(description="by when the part was decided")] = "newest",  # type: ignore[valid-type]
) -> dict:
    filters = {"since": page.since, "until": page.until, "line": page.line, "station": station, "verdict": verdict}
    found = await s.store.call("query_parts", **filters, order=order, limit=page.limit, offset=page.offset)
    total = await s.store.call("count_parts", **filters)
    parts = await _with_links(s, found)
    return {"parts": parts, "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/v1/parts/{part_id}",
    response_model=PartDetail,
    summary="One part's verdict at each station that saw it",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, PartNotFoundError, StoreError),
)
async def get_part(
    part_id: PartId,
    s: ServicesDep,
    _: Reader,
    line: Annotated[str | None, Query(pattern=ID_PATTERN, description="only this line's verdicts")] = None,
) -> dict:
    found = await s.store.call("find_part", part_id, line=line)
    if not found:
        on_line = f" on line {line!r}" if line is not None else ""
        msg = (
            f"no part verdict is stored for part {part_id!r}{on_line}: a part is decided when all its required "
            "views have arrived or its station's deadline has passed, and only on lines in plant.lines"
        )
        raise PartNotFoundError(msg)
    return {"part_id": part_id, "stations": await _with_links(s, found)}


async def _with_links(s: Services, parts: list[StoredPart]) -> list[dict]:
    """Parts as JSON, each view with links to its stored frame, image and heatmap (one store lookup for all)."""
    docs = [p.to_dict() for p in parts]
    keys = [(doc["line_id"], view["camera_id"], view["frame_id"]) for doc in docs for view in doc["views"]]
    frames = await s.store.call("find_many", keys) if keys else {}
    for doc in docs:
        for view in doc["views"]:
            view.update(frame_links(frames.get((doc["line_id"], view["camera_id"], view["frame_id"]))))
    return docs


@router.get(
    "/v1/audit",
    response_model=AuditList,
    summary="The audit trail: every change that affects verdicts",
    responses=documented(InvalidRequestError, *AUTH_ERRORS, AuditError),
)
async def audit(
    s: ServicesDep,
    _: Admin,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many, the latest")] = 100,
) -> dict:
    start = parse_since(since, name="since") if since is not None else None
    events = await asyncio.to_thread(s.audit.read, since=start)
    return {"events": [asdict(e) for e in events[-limit:]], "total": len(events), "limit": limit}
