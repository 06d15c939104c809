"""The typed records that cross process boundaries inside the service: frozen dataclasses, never dicts.

    gateway --InspectJob--> inspector replica --Judgement | JudgeFailure--> gateway
    gateway --[FrameObservation | ErrorObservation | ShadowObservation] (one MonitorBatch)--> line monitor

A record is pickled by Ray between processes, so it holds plain values only (bytes, floats, tuples,
datetimes). Adding a field to a verdict means adding it here, where the inspector fills it, and in the
HTTP response model (``serving.http.Verdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from inspectline.errors import InspectError, InvalidImageError, ModelNotFoundError, StoreError
from inspectline.store import FrameRecord, ShadowVerdict

if TYPE_CHECKING:
    from inspectline.registry import ModelRegistry


@dataclass(frozen=True)
class FrameMeta:
    """Where a frame comes from, validated at the boundary (ids match ``ids.ID_PATTERN``)."""

    line_id: str
    camera_id: str
    frame_id: str
    part_id: str | None = None
    captured_at: datetime | None = None
    explicit_id: bool = True  # False when the service generated frame_id (no retry can name it)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.line_id, self.camera_id, self.frame_id)


@dataclass(frozen=True)
class ServedModel:
    """What judges frames: a model version and the operating point in force for it (None: its card's)."""

    version: str
    operating_point_at: str | None = None  # when the operating point was set; changes roll out like a promotion

    @classmethod
    def in_force(cls, registry: ModelRegistry, version: str) -> ServedModel:
        """``version`` with the operating point in force for it now in ``registry``."""
        point = registry.operating_point(version)
        return cls(version=version, operating_point_at=point.at if point is not None else None)

    def __str__(self) -> str:
        return (
            self.version
            if self.operating_point_at is None
            else f"{self.version} (operating point of {self.operating_point_at})"
        )


def switch_instant(
    registry: ModelRegistry, reference: str, model: ServedModel, delay_s: float, now: float
) -> float | None:
    """When every gateway replica following ``reference`` switches to ``model`` (epoch seconds), or None.

    The registry's own record of the change (the production pointer's time when following ``production``,
    the operating point's time) plus ``delay_s``: each replica reads the same record and so computes the
    same instant, however far apart their polls are. The record is to the second. None when the delay is
    0 or the registry holds no time for the change (a version pinned in the config, ``latest``); an instant
    beyond ``now + delay_s`` (a promoting machine's clock ahead of this one) is held to that.
    """
    if delay_s <= 0:
        return None
    stamps = [model.operating_point_at]
    if reference == "production":
        stamps.append(registry.pointer().get("updated_at"))
    times = []
    for stamp in filter(None, stamps):
        try:
            times.append(datetime.fromisoformat(stamp).timestamp())
        except (TypeError, ValueError):  # a hand-edited pointer: switch when warm rather than never
            continue
    return min(max(times) + delay_s, now + delay_s) if times else None


@dataclass(frozen=True)
class InspectJob:
    """One encoded frame for an inspector replica to decode, preprocess and judge with ``model``."""

    image: bytes
    model: ServedModel
    camera_id: str
    name: str = "image"  # for error messages: "image" or "file 3 (part-7.png)"


@dataclass(frozen=True)
class Judgement:
    """What a model version said about one frame, with what monitoring needs."""

    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    model_version: str
    views: dict[str, float] = field(hash=False)
    engine: str
    embedding: tuple[float, ...] = field(repr=False)  # penultimate activations, for drift
    image_stats: tuple[float, ...] = field(repr=False)  # brightness, contrast ... for drift
    inference_s: float = 0.0  # the batched forward this frame was part of
    inference_cpu_s: float = 0.0  # the CPU seconds of that forward
    batch_size: int = 1
    first_in_batch: bool = True


@dataclass(frozen=True)
class JudgeFailure:
    """Why an inspector could not judge a frame; ``kind`` selects the HTTP error in the gateway."""

    kind: str  # "unsupported_image", "image_too_large", "undecodable_image", "model_unavailable", "unprocessable"
    detail: str


@dataclass(frozen=True)
class FrameObservation:
    """A judged frame for the line monitor: its metrics, drift windows and the frame store."""

    meta: FrameMeta
    judgement: Judgement
    image: bytes = field(repr=False)
    content_sha256: str
    received_at: datetime
    latency_s: float

    def store_record(self) -> FrameRecord:
        m, j = self.meta, self.judgement
        return FrameRecord(
            camera_id=m.camera_id,
            frame_id=m.frame_id,
            line_id=m.line_id,
            part_id=m.part_id,
            captured_at=m.captured_at,
            received_at=self.received_at,
            verdict=j.verdict,
            defect_probability=j.defect_probability,
            confidence=j.confidence,
            threshold=j.threshold,
            model_version=j.model_version,
            views=dict(j.views),
            image=self.image,
            image_format=None,
            content_sha256=self.content_sha256,
        )

    @property
    def size_bytes(self) -> int:
        return len(self.image) + 1024  # the image dominates; the rest is a few hundred bytes


@dataclass(frozen=True)
class ErrorObservation:
    """A request or frame answered with an error (counted by its error code)."""

    code: str
    size_bytes: int = 64


@dataclass(frozen=True)
class ShadowObservation:
    """What the shadow model said about a frame production judged; never returned to the line."""

    meta: FrameMeta
    model_version: str
    verdict: str
    defect_probability: float
    production_verdict: str
    received_at: datetime
    size_bytes: int = 256

    def store_record(self) -> ShadowVerdict:
        return ShadowVerdict(
            line_id=self.meta.line_id,
            camera_id=self.meta.camera_id,
            frame_id=self.meta.frame_id,
            model_version=self.model_version,
            verdict=self.verdict,
            defect_probability=self.defect_probability,
            received_at=self.received_at,
        )


Observation = FrameObservation | ErrorObservation | ShadowObservation


@dataclass(frozen=True)
class MonitorBatch:
    """Observations sent to the line monitor in one call (at least once: the monitor counts frames and shadow
    verdicts once by their keys, errors once per ``batch_id``)."""

    batch_id: str
    observations: tuple[Observation, ...]


# --- the review station ----------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamStatus:
    """The line monitor's live view of one (line, camera): its drift window's verdict shares and drift state."""

    line_id: str
    camera_id: str
    window_frames: int  # frames in the current window (up to drift_window)
    defect_ratio: float  # DEFECTIVE share of the window
    unsure_ratio: float  # UNSURE share of the window
    drift: str  # "off" (the model has no reference), "filling" (no window evaluated yet), "ok" or "alarm"
    drift_signals: tuple[str, ...] = ()  # signals in alarm at the last evaluation
    drift_p_value: float | None = None  # smallest corrected p-value of the last evaluation


@dataclass(frozen=True)
class HeatmapFailure:
    """Why the heatmap worker could not render a frame's heatmap; ``kind`` selects the HTTP error."""

    kind: str  # "model_not_found", "image_not_kept", "store_unavailable", "unprocessable"
    detail: str


_HEATMAP_FAILURES: dict[str, type[InspectError]] = {
    "model_not_found": ModelNotFoundError,
    "store_unavailable": StoreError,
    "unprocessable": InvalidImageError,
}


def heatmap_bytes(answer: bytes | HeatmapFailure) -> bytes:
    """The PNG, or the error the worker's failure stands for (404 model_not_found, 503 store_unavailable ...)."""
    if isinstance(answer, HeatmapFailure):
        raise _HEATMAP_FAILURES.get(answer.kind, InvalidImageError)(answer.detail)
    return answer
