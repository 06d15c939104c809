"""The line monitor: one deployment replica that every gateway feeds, so metrics are line-wide.

Why one replica: Prometheus counters live in a process. With several inspector (or gateway)
replicas, per-process registries would each hold a part of the count and ``GET /metrics`` would
return whichever replica answered. Instead each gateway sends its frame records here in
micro-batches (every ``monitor_flush_s``), and ``GET /metrics`` renders this one registry. Drift
windows must see every frame of a camera anyway, so they live here too. The monitor does little
work per frame (a few counter updates and a window append), so one replica keeps up with many
inspectors; it reserves no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from inspectline.config import MonitorOptions, StoreConfig
from inspectline.monitoring.drift import SIGNALS, DriftDetector, DriftReference
from inspectline.monitoring.metrics import LineMetrics
from inspectline.registry import ModelRegistry
from inspectline.serving.recorder import FrameRecorder
from inspectline.store import FrameRecord, FrameStore, ShadowVerdict

log = logging.getLogger("ray.serve")
OTHER = "other"


@serve.deployment(name="LineMonitor", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class LineMonitor:
    def __init__(self, registry: str, store: dict, spool_dir: str):
        self.registry = ModelRegistry(Path(registry))
        store_config = StoreConfig.model_validate(store)
        self.recorder = FrameRecorder(lambda: FrameStore(store_config), spool_dir=Path(spool_dir))
        self.metrics = LineMetrics()
        self.options = MonitorOptions()
        self.version: str | None = None
        self.reference: DriftReference | None = None
        self._detectors: dict[tuple[str, str], DriftDetector] = {}
        self._verdicts: dict[tuple[str, str], deque[str]] = {}
        self._shadow_recent: dict[str, deque[bool]] = {}
        self.metrics.drift_alpha.set(self.options.drift_alpha)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.options = MonitorOptions.model_validate(user_config or {})
        self.metrics.drift_alpha.set(self.options.drift_alpha)
        self._detectors.clear()  # new window sizes start new windows

    async def observe(self, records: list[dict]) -> int:
        """Count a micro-batch of records and hand its frames to the store writer; returns how many were taken."""
        frames, shadows = [], []
        for record in records:
            if record["type"] == "frame":
                self._frame(record)
                frames.append(_frame_record(record))
            elif record["type"] == "error":
                self.metrics.errors.labels(record["reason"]).inc()
            elif record["type"] == "shadow":
                self._shadow(record)
                shadows.append(
                    ShadowVerdict(
                        line_id=record["line"],
                        camera_id=record["camera_id"],
                        frame_id=record["frame_id"],
                        model_version=record["version"],
                        verdict=record["verdict"],
                        defect_probability=record["defect_probability"],
                        received_at=record["received_at"],
                    )
                )
            elif record["type"] == "shadow_skipped":
                self.metrics.shadow_skipped.inc()
        refused = self.recorder.submit(frames, shadows)
        if refused:
            self.metrics.errors.labels("store_refused_record").inc(refused)
        return len(records)

    async def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric."""
        self.metrics.store_backlog.set(self.recorder.backlog)
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    async def flush_store(self, timeout_s: float = 30.0) -> int:
        """Wait until the store writer has caught up (tests, orderly shutdown); returns the backlog left."""
        deadline = time.monotonic() + timeout_s
        while self.recorder.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.recorder.backlog

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful shutdown: write what we can, spool the rest to disk.
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.close()

    def _frame(self, r: dict) -> None:
        if r["model_version"] != self.version:
            self._switch_model(r["model_version"], r["threshold"])
        line, camera = self._stream(r["line"], r["camera"])
        m = self.metrics
        m.frames.labels(line, camera, r["verdict"]).inc()
        m.latency.labels(line).observe(r["latency_s"])
        if r["first_in_batch"]:  # batch metrics once per batch, not once per frame of it
            m.inference.observe(r["inference_s"])
            m.batch_size.observe(r["batch_size"])
        m.probability.labels(line, camera).observe(r["defect_probability"])
        m.confidence.labels(line, camera).observe(r["confidence"])
        views = list(r["views"].values())
        m.disagreement.labels(line, camera).observe(max(views) - min(views))
        verdicts = self._verdicts.setdefault((line, camera), deque(maxlen=self.options.drift_window))
        verdicts.append(r["verdict"])
        m.unsure_ratio.labels(line, camera).set(verdicts.count("UNSURE") / len(verdicts))
        m.defect_ratio.labels(line, camera).set(verdicts.count("DEFECTIVE") / len(verdicts))
        if self.reference is not None and (line, camera) != (OTHER, OTHER):
            self._drift(line, camera, r)

    def _shadow(self, r: dict) -> None:
        """A shadow verdict: counted by agreement with the production verdict it shadowed."""
        line, camera = self._stream(r["line"], r["camera"])
        agree = r["verdict"] == r["production_verdict"]
        self.metrics.shadow_frames.labels(line, camera, r["version"], "agree" if agree else "disagree").inc()
        recent = self._shadow_recent.setdefault(r["version"], deque(maxlen=self.options.drift_window))
        recent.append(agree)
        self.metrics.shadow_agreement.labels(r["version"]).set(sum(recent) / len(recent))

    def _drift(self, line: str, camera: str, r: dict) -> None:
        o = self.options
        detector = self._detectors.get((line, camera))
        if detector is None:
            detector = self._detectors[(line, camera)] = DriftDetector(
                self.reference, window=o.drift_window, interval=o.drift_interval, alpha=o.drift_alpha
            )
        report = detector.update(r["defect_probability"], np.asarray(r["stats"]), np.asarray(r["embedding"]))
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

    def _switch_model(self, version: str, threshold: float) -> None:
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
        self.version = version
        m.model_info.labels(version, arch).set(1)
        m.model_version.set(int(version.removeprefix("v")) if version.removeprefix("v").isdigit() else 0)
        m.threshold.set(threshold)
        m.reference_defect_ratio.set(self.reference.defect_rate if self.reference is not None else float("nan"))
        # Windows of another model's outputs are not comparable with the new reference.
        self._detectors.clear()
        for gauge in (m.drift_score, m.drift_p_value, m.drift_alarm, m.drift_window):
            gauge.clear()

    def _stream(self, line: str, camera: str) -> tuple[str, str]:
        """Bound label cardinality: past ``max_streams`` pairs, new ones count as 'other'."""
        key = (line, camera)
        if key in self._verdicts or len(self._verdicts) < self.options.max_streams:
            return key
        return OTHER, OTHER


def _frame_record(r: dict) -> FrameRecord:
    return FrameRecord(
        camera_id=r["camera"],
        frame_id=r["frame_id"],
        line_id=r["line"],
        part_id=r["part_id"],
        captured_at=r["captured_at"],
        received_at=r["received_at"],
        verdict=r["verdict"],
        defect_probability=r["defect_probability"],
        confidence=r["confidence"],
        threshold=r["threshold"],
        model_version=r["model_version"],
        views=r["views"],
        image=r["image"],
        image_format=None,
    )
