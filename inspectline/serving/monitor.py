"""The line monitor: one deployment replica that every gateway feeds, so metrics are line-wide.

Why one replica: Prometheus counters live in a process. With several inspector (or gateway)
replicas, per-process registries would each hold a part of the count and ``GET /metrics`` would
return whichever replica answered. Instead each gateway sends its observations here in
micro-batches (every ``monitor_flush_s``), and ``GET /metrics`` renders this one registry. A batch is
acknowledged once its frames are durable (in the frame store, or in the recorder's spool while the
store is down), so until then the gateway keeps them in its journal. Drift
windows must see every frame of a camera anyway, so they live here too. The monitor does little
work per frame (a few counter updates and a window append), so one replica keeps up with many
inspectors; it reserves no CPU.

Part verdicts need every view of a part in one place for the same reason, so the monitor also runs the
line's :class:`~inspectline.outputs.line.LineResults` (``plant`` in ``inspect.yaml``): each judged frame
that carries a ``part_id`` is submitted once its batch is durable, each decided part is recorded in the
frame store (through the recorder, so an outage spools it) and sent to the line's outputs, and the part
metrics are in the same registry as the frame metrics. It starts with the replica and stops with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from inspectline.challenge import export_last_results
from inspectline.config import MonitorOptions, PlantConfig, StoreConfig
from inspectline.monitoring.drift import SIGNALS, DriftDetector, DriftReference
from inspectline.monitoring.metrics import ChallengeMetrics, LineMetrics, PartMetrics
from inspectline.outputs.line import LineResults
from inspectline.registry import ModelRegistry
from inspectline.serving.parts import FrameVerdict, PartVerdict
from inspectline.serving.recorder import FrameRecorder
from inspectline.serving.records import FrameObservation, Judgement, MonitorBatch, ShadowObservation, StreamStatus
from inspectline.store import FrameRecord, FrameStore, ShadowVerdict

log = logging.getLogger("ray.serve")
OTHER = "other"
# Frames (and shadow verdicts) remembered as counted, newest last: a frame delivered again, whichever way
# (a batch resent after a lost acknowledgement, a dead gateway's journal adopted and resent, two gateway
# replicas judging one retried frame at once), is counted once. About 20 MB at this size.
COUNTED_CAPACITY = 100_000


@serve.deployment(name="LineMonitor", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class LineMonitor:
    def __init__(self, registry: str, store: dict, spool_dir: str, plant: dict | None = None):
        self.registry = ModelRegistry(Path(registry))
        store_config = StoreConfig.model_validate(store)
        self.recorder = FrameRecorder(
            lambda: FrameStore(store_config), spool_dir=Path(spool_dir) / "store", legacy_spool_dir=Path(spool_dir)
        )
        self.metrics = LineMetrics()
        self.parts = LineResults(
            PlantConfig.model_validate(plant or {}),
            metrics=PartMetrics(self.metrics.registry),
            on_part=self._record_part,
        )
        self.parts.start()
        self.challenges = ChallengeMetrics(self.metrics.registry)
        self.options = MonitorOptions()
        self.version: str | None = None
        self.arch = "unknown"
        self._shown: tuple[str | None, ...] | None = None  # the labels inspect_model_info carries now
        self.reference: DriftReference | None = None
        self._detectors: dict[tuple[str, str], DriftDetector] = {}
        self._verdicts: dict[tuple[str, str], deque[str]] = {}
        self._shadow_recent: dict[str, deque[bool]] = {}
        self._seen_batches: deque[str] = deque(maxlen=1024)  # for error observations, which name no frame
        self._counted: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.metrics.drift_alpha.set(self.options.drift_alpha)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.options = MonitorOptions.model_validate(user_config or {})
        self.metrics.drift_alpha.set(self.options.drift_alpha)
        self._detectors.clear()  # new window sizes start new windows

    async def observe(self, batch: MonitorBatch) -> int:
        """Count a batch of observations and make its frames durable; returns once they are (the gateway's ack).

        Delivery from the gateways is at least once, so counting is idempotent: a frame is counted (and
        its part view submitted) the first time its (line, camera, frame id) arrives, a shadow verdict
        the first time its frame and model arrive, an error once per batch id. The store keeps one row
        per frame anyway.
        """
        frames, shadows, views = [], [], []
        batch_seen = batch.batch_id in self._seen_batches
        for observation in batch.observations:
            if isinstance(observation, FrameObservation):
                if self._first_time(observation.meta.key):
                    self._frame(observation)
                    if observation.meta.part_id:
                        views.append(_frame_verdict(observation))
                frames.append(observation.store_record())
            elif isinstance(observation, ShadowObservation):
                if self._first_time((*observation.meta.key, observation.model_version)):
                    self._shadow(observation)
                shadows.append(observation.store_record())
            elif not batch_seen:
                self.metrics.errors.labels(observation.code).inc()
        self._seen_batches.append(batch.batch_id)
        refused = await asyncio.to_thread(self._record, frames, shadows, views)
        if refused:
            self.metrics.errors.labels("store_refused_record").inc(refused)
        return len(batch.observations)

    def _first_time(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` is new to the last COUNTED_CAPACITY keys; remembers it either way."""
        if key in self._counted:
            self._counted.move_to_end(key)
            return False
        self._counted[key] = None
        if len(self._counted) > COUNTED_CAPACITY:
            self._counted.popitem(last=False)
        return True

    async def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric."""
        self.metrics.store_backlog.set(self.recorder.backlog)
        await asyncio.to_thread(self.parts.backlog)  # sets inspect_outbox_backlog (a read of the outbox)
        await asyncio.to_thread(export_last_results, self.registry.root, self.challenges)  # a few small files
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    async def line_status(self) -> list[StreamStatus]:
        """Per (line, camera) stream seen since start: its window's verdict shares and drift state (the line view)."""
        out = []
        for (line, camera), verdicts in self._verdicts.items():
            detector = self._detectors.get((line, camera))
            last = detector.last if detector is not None else None
            drift = "off" if self.reference is None else "filling" if last is None else "ok"
            if last is not None and last.alarm:
                drift = "alarm"
            out.append(
                StreamStatus(
                    line_id=line,
                    camera_id=camera,
                    window_frames=len(verdicts),
                    defect_ratio=verdicts.count("DEFECTIVE") / len(verdicts),
                    unsure_ratio=verdicts.count("UNSURE") / len(verdicts),
                    drift=drift,
                    drift_signals=tuple(s for s, alarm in last.alarms.items() if alarm) if last else (),
                    drift_p_value=min(last.p_values.values()) if last else None,
                )
            )
        return out

    async def flush_store(self, timeout_s: float = 30.0) -> int:
        """Wait until the spool has drained into the store (tests, orderly shutdown); returns the backlog left."""
        deadline = time.monotonic() + timeout_s
        while self.recorder.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.recorder.backlog

    def __del__(self) -> None:
        parts = getattr(self, "parts", None)
        if parts is not None:  # first: its last decisions are recorded through the recorder
            parts.stop()
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.close()

    def _record(self, frames: list[FrameRecord], shadows: list[ShadowVerdict], views: list[FrameVerdict]) -> int:
        """Make a batch durable, then hand its part views to the line (a part never names a frame not yet durable)."""
        refused = self.recorder.record(frames, shadows)
        for view in views:
            self.parts.submit(view)  # the parts it decides are recorded by _record_part
        return refused

    def _record_part(self, part: PartVerdict) -> None:
        """A decided part into the frame store (or the recorder's spool), whichever thread decided it."""
        if self.recorder.record([], parts=[part.store_record()]):
            self.metrics.errors.labels("store_refused_record").inc()

    def _frame(self, o: FrameObservation) -> None:
        j = o.judgement
        if j.model_version != self.version:
            self._switch_model(j.model_version)
        self._show_model(j.engine)
        self.metrics.threshold.set(j.threshold)
        line, camera = self._stream(o.meta.line_id, o.meta.camera_id)
        m = self.metrics
        m.frames.labels(line, camera, j.verdict).inc()
        m.latency.labels(line).observe(o.latency_s)
        if j.first_in_batch:  # batch metrics once per batch, not once per frame of it
            m.inference.observe(j.inference_s)
            m.inference_cpu.inc(j.inference_cpu_s)
            m.batch_size.observe(j.batch_size)
        m.probability.labels(line, camera).observe(j.defect_probability)
        m.confidence.labels(line, camera).observe(j.confidence)
        views = list(j.views.values())
        m.disagreement.labels(line, camera).observe(max(views) - min(views))
        verdicts = self._verdicts.setdefault((line, camera), deque(maxlen=self.options.drift_window))
        verdicts.append(j.verdict)
        m.unsure_ratio.labels(line, camera).set(verdicts.count("UNSURE") / len(verdicts))
        m.defect_ratio.labels(line, camera).set(verdicts.count("DEFECTIVE") / len(verdicts))
        if self.reference is not None and (line, camera) != (OTHER, OTHER):
            self._drift(line, camera, j)

    def _shadow(self, o: ShadowObservation) -> None:
        """A shadow verdict: counted by agreement with the production verdict it shadowed."""
        line, camera = self._stream(o.meta.line_id, o.meta.camera_id)
        agree = o.verdict == o.production_verdict
        self.metrics.shadow_frames.labels(line, camera, o.model_version, "agree" if agree else "disagree").inc()
        recent = self._shadow_recent.setdefault(o.model_version, deque(maxlen=self.options.drift_window))
        recent.append(agree)
        self.metrics.shadow_agreement.labels(o.model_version).set(sum(recent) / len(recent))

    def _drift(self, line: str, camera: str, j: Judgement) -> None:
        o = self.options
        detector = self._detectors.get((line, camera))
        if detector is None:
            detector = self._detectors[(line, camera)] = DriftDetector(
                self.reference, window=o.drift_window, interval=o.drift_interval, alpha=o.drift_alpha
            )
        report = detector.update(j.defect_probability, np.asarray(j.image_stats), np.asarray(j.embedding))
        self.metrics.drift_window.labels(line, camera).set(len(detector))
        if report is None:
            return
        for signal in SIGNALS:
            self.metrics.drift_score.labels(line, camera, signal).set(report.scores[signal])
            self.metrics.drift_p_value.labels(line, camera, signal).set(report.p_values[signal])
            self.metrics.drift_alarm.labels(line, camera, signal).set(int(report.alarms[signal]))
        if report.alarm:
            fired = [s for s, a in report.alarms.items() if a]
            log.warning("drift alarm on line %s camera %s: %s", line, camera, ", ".join(fired))

    def _switch_model(self, version: str) -> None:
        m = self.metrics
        m.model_info.clear()
        try:
            model = self.registry.get(version)
            arch = model.card.arch
            path = model.path / "drift_reference.npz"
            self.reference = DriftReference.load(path) if path.is_file() else None
            if self.reference is None:
                log.warning("model %s has no drift reference; drift detection is off for it", version)
        except Exception as exc:  # noqa: BLE001 - metrics must keep counting even if the reference is unreadable
            log.warning("cannot read the drift reference of %s: %s", version, exc)
            arch, self.reference = "unknown", None
        self.version, self.arch, self._shown = version, arch, None
        m.model_version.set(int(version.removeprefix("v")) if version.removeprefix("v").isdigit() else 0)
        m.reference_defect_ratio.set(self.reference.defect_rate if self.reference is not None else float("nan"))
        # Windows of another model's outputs are not comparable with the new reference.
        self._detectors.clear()
        for gauge in (m.drift_score, m.drift_p_value, m.drift_alarm, m.drift_window):
            gauge.clear()

    def _show_model(self, engine: str) -> None:
        """``inspect_model_info`` names the served version and the engine that judged its latest frame."""
        name, _, precision = engine.partition(" ")
        shown = (self.version, self.arch, name, precision or "unknown")
        if shown != self._shown:
            self.metrics.model_info.clear()
            self.metrics.model_info.labels(*shown).set(1)
            self._shown = shown

    def _stream(self, line: str, camera: str) -> tuple[str, str]:
        """Bound label cardinality: past ``max_streams`` pairs, new ones count as 'other'."""
        key = (line, camera)
        if key in self._verdicts or len(self._verdicts) < self.options.max_streams:
            return key
        return OTHER, OTHER


def _frame_verdict(o: FrameObservation) -> FrameVerdict:
    """A judged frame as the part aggregator takes it."""
    return FrameVerdict(
        line_id=o.meta.line_id,
        camera_id=o.meta.camera_id,
        part_id=o.meta.part_id,
        frame_id=o.meta.frame_id,
        verdict=o.judgement.verdict,
        defect_probability=o.judgement.defect_probability,
        received_at=o.received_at,
        model_version=o.judgement.model_version,
    )
