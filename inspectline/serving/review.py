"""The review station's questions, answered without Ray: the line view and the threshold what-if of a window.

The routes (``serving.review_routes``, ``serving.model_routes``) reach everything here through
:class:`ReviewServices`, which the gateway builds from Ray handles (the heatmap worker, the line monitor)
and tests build from in-process parts. Each answer is computed in one worker thread with one store, so
a page costs one hop off the event loop however many queries it asks.

**Line view** (:func:`line_summary`): per line and camera, the latest frames, throughput (frames received
in the last minute, counted by the store), and from the line monitor's live window the defect and UNSURE
shares and the drift state. Streams are the ones the monitor has seen since it started plus the ones among
the store's newest frames, so a restarted monitor still shows every active camera.

**What-if** (:func:`whatif_report`): the labelled frames of a window (two columns, not whole rows:
``FrameStore.labelled_scores``) scored at a proposed operating point, at the one in force, and over a
sweep of thresholds for the chart; see :mod:`inspectline.whatif` for the rule and the rates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from inspectline.serving.model_book import ModelBook
from inspectline.serving.records import StreamStatus
from inspectline.store import FrameStore, StoredFrame
from inspectline.whatif import DEFAULT_SWEEP, sweep_arrays, what_if_arrays

OTHER = "other"  # the monitor's bucket for streams past max_streams: not a camera of its own
THROUGHPUT_WINDOW = timedelta(seconds=60)
_DISCOVERY_FRAMES = 2000  # the store's newest frames name the streams active lately
MAX_STREAMS = 256


@dataclass
class ReviewServices:
    """What the review routes call besides the frame store: heatmaps, the monitor's live state, the models."""

    models: ModelBook
    heatmap: Callable[[StoredFrame, str], Awaitable[bytes]]  # (frame, "overlay" | "raw") -> PNG
    line_status: Callable[[], Awaitable[list[StreamStatus]]]


def line_summary(
    store: FrameStore,
    live: Sequence[StreamStatus],
    *,
    now: datetime,
    latest: int,
    line: str | None = None,
    view: Callable[[StoredFrame], dict[str, Any]] = StoredFrame.to_dict,
) -> list[dict[str, Any]]:
    """One entry per (line, camera), ordered by line then camera; ``view`` renders each latest frame."""
    status = {(s.line_id, s.camera_id): s for s in live if line is None or s.line_id == line}
    recent = store.active_streams(recent=_DISCOVERY_FRAMES, line=line)
    streams = sorted({*status, *recent} - {(OTHER, OTHER)})[:MAX_STREAMS]
    out = []
    for line_id, camera_id in streams:
        frames = store.query(line=line_id, camera=camera_id, order="newest", limit=latest)
        s = status.get((line_id, camera_id))
        out.append(
            {
                "line_id": line_id,
                "camera_id": camera_id,
                "latest": [view(f) for f in frames],
                "last_frame_at": frames[0].received_at if frames else None,
                "frames_last_minute": store.count(line=line_id, camera=camera_id, since=now - THROUGHPUT_WINDOW),
                "window_frames": s.window_frames if s else 0,
                "defect_ratio": s.defect_ratio if s else None,
                "unsure_ratio": s.unsure_ratio if s else None,
                "drift": s.drift if s else "unknown",
                "drift_signals": list(s.drift_signals) if s else [],
                "drift_p_value": s.drift_p_value if s else None,
            }
        )
    return out


def whatif_report(
    store: FrameStore,
    *,
    threshold: float,
    unsure_band: float,
    current: tuple[float, float],
    filters: dict[str, Any],
    thresholds: Sequence[float] = DEFAULT_SWEEP,
) -> dict[str, Any]:
    """The labelled frames matching ``filters`` scored at ``(threshold, unsure_band)``, at ``current`` and
    over ``thresholds`` (at the proposed band): what the what-if page shows."""
    labels, probabilities, versions = store.labelled_scores(**filters)
    versions_ = tuple(versions)
    proposed = what_if_arrays(labels, probabilities, threshold, unsure_band, model_versions=versions_)
    in_force = what_if_arrays(labels, probabilities, *current, model_versions=versions_)
    sweep = sweep_arrays(labels, probabilities, unsure_band, thresholds, model_versions=versions_)
    rates = ("threshold", "recall", "precision", "false_reject_rate", "unsure_share")
    return {
        "frames": len(labels),
        "model_versions": list(versions),
        "proposed": proposed.to_dict(),
        "current": in_force.to_dict(),
        "sweep": [{name: getattr(w, name) for name in rates} for w in sweep],
    }
