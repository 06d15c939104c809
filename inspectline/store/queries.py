"""The review page's questions as SQL: which frames match the filters, in which order, one page at a time.

Every filter is an equality or a time range on ``frames``, and each common combination has an index
whose leading columns are the filters and whose next column is the order (see ``schema.py``), so a page
of the review queue is an index walk that stops after ``limit`` rows on SQLite and PostgreSQL alike;
``benchmarks/store_queries.py`` checks the plans on a 100,000-frame store.

Values reach the database as bound parameters. Limits, offsets and ids outside the databases' 64-bit
integers are refused here (or treated as "no such frame"), so the driver never raises ``OverflowError``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from inspectline.errors import StoreError
from inspectline.store.records import ORDERS, normalize_verdict
from inspectline.store.schema import frames

MAX_INT64 = 2**63 - 1  # both databases' largest integer: no id, limit or offset can be larger
FILTERS = ("since", "until", "line", "camera", "verdict", "labelled", "model_version", "has_image")
FRAME_COLUMNS = [c for c in frames.c if c.name != "uncertainty"]  # StoredFrame computes it
_ORDER_BY = {
    "uncertainty": (frames.c.uncertainty.asc(), frames.c.received_at.desc(), frames.c.id.desc()),
    "newest": (frames.c.received_at.desc(), frames.c.id.desc()),
    "oldest": (frames.c.received_at.asc(), frames.c.id.asc()),
}


def select_frames(*, order: str = "uncertainty", limit: int | None = None, offset: int = 0, **filters) -> sa.Select:
    """SELECT of the frames matching ``filters`` (see :func:`conditions`) in ``order``, one page of them."""
    check_page(limit, offset)
    stmt = sa.select(*FRAME_COLUMNS).where(*conditions(**filters)).order_by(*_order_by(order))
    return stmt.limit(limit).offset(offset or None)


def count_frames(**filters) -> sa.Select:
    """SELECT COUNT(*) of the frames matching ``filters``."""
    return sa.select(sa.func.count()).select_from(frames).where(*conditions(**filters))


def conditions(
    since: datetime | None = None,
    until: datetime | None = None,
    line: str | None = None,
    camera: str | None = None,
    verdict: str | None = None,
    labelled: bool | None = None,
    model_version: str | None = None,
    has_image: bool | None = None,
) -> list:
    """WHERE clauses for the shared filters; ``since`` is inclusive and ``until`` exclusive."""
    where = []
    if since is not None:
        where.append(frames.c.received_at >= since)
    if until is not None:
        where.append(frames.c.received_at < until)
    if line is not None:
        where.append(frames.c.line_id == line)
    if camera is not None:
        where.append(frames.c.camera_id == camera)
    if verdict is not None:
        where.append(frames.c.verdict == normalize_verdict(verdict))
    if labelled is not None:
        where.append(frames.c.label.is_not(None) if labelled else frames.c.label.is_(None))
    if model_version is not None:
        where.append(frames.c.model_version == model_version)
    if has_image is not None:
        where.append(frames.c.image_sha256.is_not(None) if has_image else frames.c.image_sha256.is_(None))
    return where


def check_filters(filters: dict) -> None:
    """StoreError naming the accepted filters if ``filters`` has any other key."""
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        msg = f"unknown frame filters {unknown}; accepted: {', '.join(FILTERS)}"
        raise StoreError(msg)


def check_page(limit: object, offset: object) -> None:
    """StoreError naming the bounds unless ``limit`` is None or 1..2**63-1 and ``offset`` is 0..2**63-1."""
    for name, value, low in (("limit", limit, 1), ("offset", offset, 0)):
        if name == "limit" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_INT64:
            msg = f"{name} {value!r} must be a whole number from {low} to {MAX_INT64} (2**63 - 1)"
            raise StoreError(msg)


def is_int64(value: object) -> bool:
    """Whether ``value`` can be a row id: an int (not a bool) that the databases' 64-bit integers hold."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT64 - 1 <= value <= MAX_INT64


def _order_by(order: str) -> tuple:
    if order not in _ORDER_BY:
        msg = f"order {order!r} is not one of {', '.join(ORDERS)}"
        raise StoreError(msg)
    return _ORDER_BY[order]
