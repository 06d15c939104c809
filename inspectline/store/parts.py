"""Part verdicts in the frame store: writing the ones the line monitor decides, and the parts API's questions.

A part is decided once per (line, station); writing the same decision again (a spooled batch replayed
after a crash) leaves the first row as it was, as frames do. The filters mirror the frames' (``queries``):
equalities on line, station and verdict and a ``[since, until)`` range on ``decided_at``, each with an
index whose next column is the order, so a page is an index walk on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from inspectline.errors import StoreError
from inspectline.store.database import Database
from inspectline.store.queries import check_page
from inspectline.store.records import PART_VERDICTS, PartRecord, StoredPart, check_part
from inspectline.store.schema import parts

PART_ORDERS = ("newest", "oldest")
_ORDER_BY = {
    "newest": (parts.c.decided_at.desc(), parts.c.id.desc()),
    "oldest": (parts.c.decided_at.asc(), parts.c.id.asc()),
}


def add_parts(db: Database, records: Sequence[PartRecord]) -> int:
    """Record decided parts in one transaction; returns how many were new (a repeated decision is ignored)."""
    for record in records:
        check_part(record)
    if not records:
        return 0
    rows = [_part_row(r) for r in records]
    stmt = db.insert(parts).on_conflict_do_nothing(index_elements=["line_id", "station", "part_id"])
    with db.write() as conn:
        return len(conn.execute(stmt.returning(parts.c.id), rows).all())


def find_parts(conn: Connection, part_id: str, line: str | None = None) -> list[StoredPart]:
    """Every station's verdict on ``part_id`` (on ``line`` when given), in the order they were decided."""
    stmt = sa.select(parts).where(parts.c.part_id == part_id)
    if line is not None:
        stmt = stmt.where(parts.c.line_id == line)
    return [to_part(row) for row in conn.execute(stmt.order_by(*_ORDER_BY["oldest"]))]


def select_parts(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    line: str | None = None,
    station: str | None = None,
    verdict: str | None = None,
    order: str = "newest",
    limit: int | None = None,
    offset: int = 0,
) -> sa.Select:
    """SELECT of the parts decided in ``[since, until)`` matching every filter given, one page in ``order``."""
    check_page(limit, offset)
    if order not in _ORDER_BY:
        msg = f"order {order!r} is not one of {', '.join(PART_ORDERS)}"
        raise StoreError(msg)
    where = _conditions(since, until, line, station, verdict)
    return sa.select(parts).where(*where).order_by(*_ORDER_BY[order]).limit(limit).offset(offset or None)


def count_parts(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    line: str | None = None,
    station: str | None = None,
    verdict: str | None = None,
) -> sa.Select:
    """SELECT COUNT(*) of the parts :func:`select_parts` would page through."""
    return sa.select(sa.func.count()).select_from(parts).where(*_conditions(since, until, line, station, verdict))


def _conditions(
    since: datetime | None, until: datetime | None, line: str | None, station: str | None, verdict: str | None
) -> list:
    where = []
    if since is not None:
        where.append(parts.c.decided_at >= since)
    if until is not None:
        where.append(parts.c.decided_at < until)
    if line is not None:
        where.append(parts.c.line_id == line)
    if station is not None:
        where.append(parts.c.station == station)
    if verdict is not None:
        where.append(parts.c.verdict == normalize_part_verdict(verdict))
    return where


def normalize_part_verdict(value: str) -> str:
    """``no_result`` / ``Ok`` ... -> ``NO_RESULT`` / ``OK``; StoreError naming the part verdicts otherwise."""
    verdict = str(value).strip().upper()
    if verdict not in PART_VERDICTS:
        msg = f"part verdict {value!r} is not one of {', '.join(PART_VERDICTS)}"
        raise StoreError(msg)
    return verdict


def _part_row(r: PartRecord) -> dict[str, Any]:
    return {
        "line_id": r.line_id,
        "station": r.station,
        "part_id": r.part_id,
        "verdict": r.verdict,
        "disposition": r.disposition,
        "reason": r.reason,
        "views": [dict(v) for v in r.views],
        "missing": list(r.missing),
        "deadline_missed": bool(r.deadline_missed),
        "first_view_at": r.first_view_at,
        "decided_at": r.decided_at,
        "decision_seconds": float(r.decision_seconds),
    }


def to_part(row: sa.Row) -> StoredPart:
    """A ``parts`` row as the value the store hands out."""
    values = dict(row._mapping)
    values["views"] = tuple(values["views"])
    values["missing"] = tuple(values["missing"])
    return StoredPart(**values)
