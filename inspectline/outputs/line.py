"""Frame verdicts in, part verdicts out to the line: the aggregator, the outbox and the outputs, together.

:class:`LineResults` is what the service runs (once, in the line monitor): every judged frame goes to
``submit``; parts are decided by :class:`~inspectline.serving.parts.PartAggregator` when their last
required view arrives, or by a timer thread at their station's deadline; each part verdict is counted
in :class:`~inspectline.monitoring.metrics.PartMetrics`, handed to ``on_part`` (e.g. to store it) and,
when its line has outputs, committed to the durable outbox, from which the dispatcher's threads
deliver it to MQTT, OPC UA and the webhook.

    results = LineResults(cfg.plant, metrics=PartMetrics(line_metrics.registry))
    results.start()
    results.submit(FrameVerdict(line_id=..., camera_id=..., part_id=..., frame_id=..., verdict=..., ...))
    results.stop()

Ordering: decisions are committed to the outbox under one lock, so each line's sequence numbers follow
the order in which its parts were decided. ``submit`` may commit (an fsynced SQLite write, about a
millisecond on an SSD) when a frame completes a part.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from inspectline.config import PlantConfig
from inspectline.monitoring.metrics import PartMetrics
from inspectline.outputs.dispatcher import Dispatcher
from inspectline.outputs.outbox import Outbox, Output
from inspectline.serving.parts import FrameVerdict, PartAggregator, PartVerdict

log = logging.getLogger(__name__)

OutputFactory = Callable[[PlantConfig, Outbox], tuple[dict[str, list[Output]], Callable[[], None]]]


def build_outputs(plant: PlantConfig, outbox: Outbox) -> tuple[dict[str, list[Output]], Callable[[], None]]:
    """The outputs each line configures, and a function that stops what they share (OPC UA servers).

    Lines on the same OPC UA endpoint share one server; each line's Sequence starts where its outbox
    cursor is, so the PLC sees it grow across restarts.
    """
    from inspectline.outputs.mqtt import MqttPublisher
    from inspectline.outputs.opcua import OpcUaServer
    from inspectline.outputs.webhook import WebhookPublisher

    servers: dict[str, OpcUaServer] = {}
    outputs: dict[str, list[Output]] = {}

    def stop_shared() -> None:
        for server in servers.values():
            server.stop()

    try:
        for line_id, line in plant.lines.items():
            chosen: list[Output] = []
            if line.outputs.mqtt is not None:
                chosen.append(MqttPublisher(line.outputs.mqtt, line_id))
            if line.outputs.opcua is not None:
                settings = line.outputs.opcua
                if settings.endpoint not in servers:
                    servers[settings.endpoint] = OpcUaServer(settings.endpoint, settings.namespace)
                    servers[settings.endpoint].start()
                delivered = outbox.last_delivered(line_id, "opcua")
                chosen.append(servers[settings.endpoint].line(line_id, settings, delivered=delivered))
            if line.outputs.webhook is not None:
                chosen.append(WebhookPublisher(line.outputs.webhook, line_id))
            if chosen:
                outputs[line_id] = chosen
    except BaseException:
        for made in outputs.values():
            for output in made:
                output.close()
        stop_shared()
        raise
    return outputs, stop_shared


def output_names(plant: PlantConfig) -> dict[str, list[str]]:
    """The outputs each line configures, by name (the outbox keeps one cursor per name)."""
    names = {
        line_id: [name for name in ("mqtt", "opcua", "webhook") if getattr(line.outputs, name) is not None]
        for line_id, line in plant.lines.items()
    }
    return {line_id: found for line_id, found in names.items() if found}


class LineResults:
    """Part verdicts from frame verdicts, delivered to every output of their line (module docstring)."""

    def __init__(
        self,
        plant: PlantConfig,
        *,
        metrics: PartMetrics | None = None,
        on_part: Callable[[PartVerdict], None] | None = None,
        build: OutputFactory = build_outputs,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        self.plant = plant
        self.metrics = metrics if metrics is not None else PartMetrics()
        self.on_part = on_part
        self.parts = PartAggregator(plant.lines, max_open_parts=plant.max_open_parts, clock=clock, now=now)
        self.outbox = Outbox(plant.outbox, outputs=output_names(plant))
        self._build = build
        self._stop_shared: Callable[[], None] = lambda: None
        self._outputs: Mapping[str, Sequence[Output]] = {}
        self.dispatcher: Dispatcher | None = None
        self._lock = threading.Condition()
        self._stopping = False
        self._timer = threading.Thread(target=self._expire_loop, name="part-deadlines", daemon=True)
        self._late_seen: dict[str, int] = {}

    def start(self) -> None:
        """Open the outputs (connect, start OPC UA servers), then start delivering and the deadline timer."""
        self._outputs, self._stop_shared = self._build(self.plant, self.outbox)
        self.dispatcher = Dispatcher(
            self.outbox,
            self._outputs,
            metrics=self.metrics,
            backoff_initial_s=self.plant.backoff_initial_s,
            backoff_max_s=self.plant.backoff_max_s,
        )
        self.dispatcher.start()
        self._timer.start()

    def submit(self, frame: FrameVerdict) -> list[PartVerdict]:
        """Take one judged frame; returns the parts it decided (already committed to the outbox)."""
        with self._lock:
            decided = self.parts.add(frame)
            self._publish(decided)
            self._lock.notify_all()  # a new part may have the earliest deadline now
        return decided

    def backlog(self) -> dict[tuple[str, str], int]:
        """Verdicts waiting per (line, output); also exported as ``inspect_outbox_backlog``."""
        return self.dispatcher.update_backlog() if self.dispatcher else self.outbox.backlog()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the timer and the deliveries; undelivered verdicts stay in the outbox for the next start."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._timer.is_alive():
            self._timer.join(timeout)
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout)
        for outputs in self._outputs.values():
            for output in outputs:
                output.close()
        self._stop_shared()
        self.outbox.close()

    def _expire_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                self._publish(self.parts.expire())
                wait = self.parts.seconds_to_next_deadline()
                self._lock.wait(1.0 if wait is None else min(wait, 1.0))

    def _publish(self, decided: list[PartVerdict]) -> None:
        m = self.metrics
        for part in decided:
            m.parts.labels(part.line_id, part.station, part.verdict).inc()
            m.decision_seconds.labels(part.line_id, part.station).observe(part.seconds)
            if part.deadline_missed:
                m.deadline_missed.labels(part.line_id, part.station).inc()
            if part.line_id in self.outbox.outputs:
                self.outbox.put(part.line_id, part.to_dict())
            if self.on_part is not None:
                try:
                    self.on_part(part)
                except Exception:  # a failing listener must not stop verdicts reaching the line
                    log.exception("on_part failed for part %s of line %s", part.part_id, part.line_id)
        for line_id, count in self.parts.late_views.items():
            if count > self._late_seen.get(line_id, 0):
                m.late_views.labels(line_id).inc(count - self._late_seen.get(line_id, 0))
                self._late_seen[line_id] = count
        m.open_parts.set(self.parts.open_parts)
        if decided and self.dispatcher is not None:
            self.dispatcher.update_backlog()
