"""Part verdicts: one verdict per part from the frames several cameras took of it, by a deadline.

A line's station (``plant.lines.<line>.stations`` in ``inspect.yaml``) names the cameras that see a
part and the views every part needs. Frame verdicts carrying the same ``part_id`` are collected per
(line, station, part); the part is decided when its last required view arrives, or when the station's
deadline (milliseconds after the part's first view) passes, whichever is first, by one rule:

    any view DEFECTIVE                      -> DEFECTIVE
    else any view UNSURE                    -> UNSURE
    else every required view there and OK   -> OK
    else (a required view missing)          -> NO_RESULT

Each view's verdict, probability, frame id and heatmap link stay attached, and the line's config says
what the reject gate does with each verdict (``disposition``: NO_RESULT and UNSURE reject by default).
A view that arrives after its part was decided is counted (``late_views``) and never changes it.

Memory is bounded: at most ``max_open_parts`` parts wait for views (beyond that the oldest is decided
at once, as at its deadline) and the keys of the last ``remember_decided`` decided parts are kept to
recognise late views. No Ray, no threads and no I/O: time comes from the injected ``clock``
(monotonic seconds, for deadlines) and ``now`` (wall time, for the record), so tests drive it.

    parts = PartAggregator(cfg.plant.lines)
    decided = parts.add(FrameVerdict(line_id="line-1", camera_id="top", part_id="P-42", ...))
    decided += parts.expire()                 # call at least every parts.seconds_to_next_deadline()
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from inspectline.config import LineConfig, StationConfig
from inspectline.store.records import PART_VIEW_FIELDS, VERDICTS, PartRecord

FRAME_VERDICTS = VERDICTS


@dataclass(frozen=True)
class FrameVerdict:
    """One judged frame as the part aggregator needs it (what the service answered the camera)."""

    line_id: str
    camera_id: str
    part_id: str | None
    frame_id: str
    verdict: str
    defect_probability: float
    received_at: datetime
    heatmap: str | None = None  # a link to the frame's heatmap (or its stored frame id)
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in FRAME_VERDICTS:
            msg = f"frame {self.frame_id!r}: verdict {self.verdict!r} is not one of {', '.join(FRAME_VERDICTS)}"
            raise ValueError(msg)


@dataclass(frozen=True)
class PartView:
    """One view of a decided part."""

    camera_id: str
    frame_id: str
    verdict: str
    defect_probability: float
    heatmap: str | None
    model_version: str | None
    received_at: datetime


@dataclass(frozen=True)
class PartVerdict:
    """The verdict on one part at one station, with every view it was decided from."""

    line_id: str
    station: str
    part_id: str
    verdict: str  # one of store.PART_VERDICTS
    disposition: str  # "reject" or "pass": what the line's reject gate does with it
    reason: str
    views: tuple[PartView, ...]
    missing: tuple[str, ...]  # required views that had not arrived
    deadline_missed: bool  # decided at the deadline (or evicted) with required views missing
    first_view_at: datetime
    decided_at: datetime
    seconds: float  # from the first view to the decision, by the aggregator's clock

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 text."""
        doc = asdict(self)
        doc["views"] = [{**v, "received_at": v["received_at"].isoformat()} for v in doc["views"]]
        doc["first_view_at"] = self.first_view_at.isoformat()
        doc["decided_at"] = self.decided_at.isoformat()
        doc["missing"] = list(self.missing)
        return doc

    def store_record(self) -> PartRecord:
        """What the frame store keeps of this verdict: each view's ids, verdict, probability, model and time."""
        views = self.to_dict()["views"]
        return PartRecord(
            line_id=self.line_id,
            station=self.station,
            part_id=self.part_id,
            verdict=self.verdict,
            disposition=self.disposition,
            reason=self.reason,
            views=tuple({name: view[name] for name in PART_VIEW_FIELDS} for view in views),
            missing=self.missing,
            deadline_missed=self.deadline_missed,
            first_view_at=self.first_view_at,
            decided_at=self.decided_at,
            decision_seconds=self.seconds,
        )


def decide(views: Iterable[PartView], required: Iterable[str]) -> tuple[str, str, tuple[str, ...]]:
    """The part rule (module docstring): ``(verdict, reason, missing required views)``."""
    views = list(views)
    missing = tuple(sorted(set(required) - {v.camera_id for v in views}))
    for verdict in ("DEFECTIVE", "UNSURE"):
        flagged = [v for v in views if v.verdict == verdict]
        if flagged:
            named = ", ".join(f"{v.camera_id} p={v.defect_probability:.3f}" for v in flagged)
            return verdict, f"{verdict} in view {named}", missing
    if missing:
        return "NO_RESULT", f"no view from {', '.join(missing)} by the deadline", missing
    return "OK", f"all {len(views)} views OK", missing


@dataclass
class _OpenPart:
    line: LineConfig
    line_id: str
    station: StationConfig
    part_id: str
    first_seen: float
    first_view_at: datetime
    deadline: float
    views: list[PartView] = field(default_factory=list)
    frame_ids: set[str] = field(default_factory=set)


class PartAggregator:
    """Frame verdicts in, part verdicts out (see the module docstring). Not thread-safe: one caller."""

    def __init__(
        self,
        lines: Mapping[str, LineConfig],
        *,
        max_open_parts: int = 10_000,
        remember_decided: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        if max_open_parts < 1 or remember_decided < 0:
            msg = f"max_open_parts must be >= 1 and remember_decided >= 0, got {max_open_parts}, {remember_decided}"
            raise ValueError(msg)
        self.lines = dict(lines)
        self.max_open_parts = max_open_parts
        self.remember_decided = remember_decided
        self.clock, self.now = clock, now
        self._open: OrderedDict[tuple[str, str, str], _OpenPart] = OrderedDict()  # oldest first
        self._deadlines: list[tuple[float, tuple[str, str, str]]] = []  # heap; stale entries skipped
        self._decided: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.late_views: dict[str, int] = {}  # per line
        self.ignored: dict[str, int] = {}  # per reason: no_part_id, unknown_line, unknown_camera, repeated_frame
        self.evicted = 0

    @property
    def open_parts(self) -> int:
        return len(self._open)

    def add(self, frame: FrameVerdict) -> list[PartVerdict]:
        """Take one frame verdict; returns the parts it decided (overdue ones first, then possibly its own)."""
        decided = self.expire()
        line = self.lines.get(frame.line_id)
        station = line.station_of(frame.camera_id) if line is not None else None
        if not frame.part_id or line is None or station is None:
            reason = "no_part_id" if not frame.part_id else "unknown_line" if line is None else "unknown_camera"
            self.ignored[reason] = self.ignored.get(reason, 0) + 1
            return decided
        key = (frame.line_id, station.name, frame.part_id)
        if key in self._decided:
            self.late_views[frame.line_id] = self.late_views.get(frame.line_id, 0) + 1
            return decided
        part = self._open.get(key)
        if part is None:
            part = self._open_part(key, line, station, frame)
            if len(self._open) > self.max_open_parts:
                oldest = next(iter(self._open))
                self.evicted += 1
                decided.append(self._decide(oldest, deadline_passed=True))
        if frame.frame_id in part.frame_ids:
            self.ignored["repeated_frame"] = self.ignored.get("repeated_frame", 0) + 1
            return decided
        part.frame_ids.add(frame.frame_id)
        part.views.append(
            PartView(
                camera_id=frame.camera_id,
                frame_id=frame.frame_id,
                verdict=frame.verdict,
                defect_probability=frame.defect_probability,
                heatmap=frame.heatmap,
                model_version=frame.model_version,
                received_at=frame.received_at,
            )
        )
        if set(station.required_views) <= {v.camera_id for v in part.views}:
            decided.append(self._decide(key, deadline_passed=False))
        return decided

    def expire(self) -> list[PartVerdict]:
        """Decide every part whose deadline has passed (NO_RESULT unless a view already settles it)."""
        decided = []
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            part = self._open.get(key)
            if part is not None and part.deadline == deadline:
                decided.append(self._decide(key, deadline_passed=True))
        return decided

    def seconds_to_next_deadline(self) -> float | None:
        """How long until :meth:`expire` has something to do (None: no part is waiting)."""
        while self._deadlines and self._deadlines[0][1] not in self._open:
            heapq.heappop(self._deadlines)
        return max(0.0, self._deadlines[0][0] - self.clock()) if self._deadlines else None

    def _open_part(self, key: tuple[str, str, str], line: LineConfig, station: StationConfig, frame: FrameVerdict):
        first_seen = self.clock()
        part = _OpenPart(
            line=line,
            line_id=frame.line_id,
            station=station,
            part_id=frame.part_id or "",
            first_seen=first_seen,
            first_view_at=self.now(),
            deadline=first_seen + station.deadline_ms / 1000,
        )
        self._open[key] = part
        heapq.heappush(self._deadlines, (part.deadline, key))
        return part

    def _decide(self, key: tuple[str, str, str], *, deadline_passed: bool) -> PartVerdict:
        part = self._open.pop(key)
        verdict, reason, missing = decide(part.views, part.station.required_views)
        self._decided[key] = None
        while len(self._decided) > self.remember_decided:
            self._decided.popitem(last=False)
        return PartVerdict(
            line_id=part.line_id,
            station=part.station.name,
            part_id=part.part_id,
            verdict=verdict,
            disposition=part.line.disposition(verdict),
            reason=reason,
            views=tuple(part.views),
            missing=missing,
            deadline_missed=deadline_passed and bool(missing),
            first_view_at=part.first_view_at,
            decided_at=self.now(),
            seconds=self.clock() - part.first_seen,
        )
