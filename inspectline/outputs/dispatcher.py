"""Delivery threads: one per (line, output), each taking its next verdict from the outbox, in order.

A thread delivers the verdict after its cursor, waits for the output to confirm it (``deliver``
returns), then moves the cursor. A :class:`DeliveryError` (or any unexpected error from an output's
library) is counted in ``inspect_output_delivery_failures_total{kind="retry"}`` and the same verdict is
tried again after a backoff with jitter (doubling from ``backoff_initial_s`` to ``backoff_max_s``); a
:class:`DeliveryRefused` is recorded in the outbox, counted as ``kind="refused"`` and skipped. The
outbox backlog per (line, output) is exported as ``inspect_outbox_backlog``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence

from inspectline.monitoring.metrics import PartMetrics
from inspectline.outputs.outbox import DeliveryError, DeliveryRefused, Outbox, Output

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs the delivery threads of every line's outputs until :meth:`stop`."""

    def __init__(
        self,
        outbox: Outbox,
        outputs: Mapping[str, Sequence[Output]],
        *,
        metrics: PartMetrics | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
    ):
        self.outbox, self.outputs, self.metrics = outbox, outputs, metrics
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.rng = rng or random.Random()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for line_id, outputs in self.outputs.items():
            for output in outputs:
                thread = threading.Thread(
                    target=self._run, args=(line_id, output), name=f"deliver-{line_id}-{output.name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        self.update_backlog()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the deliveries in progress (each bounded by its output's timeout)."""
        self._stop.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def update_backlog(self) -> dict[tuple[str, str], int]:
        backlog = self.outbox.backlog()
        if self.metrics is not None:
            for (line_id, output), count in backlog.items():
                self.metrics.backlog.labels(line_id, output).set(count)
        return backlog

    def _run(self, line_id: str, output: Output) -> None:
        failures = 0
        while not self._stop.is_set():
            item = self.outbox.next(line_id, output.name)
            if item is None:
                self.outbox.wait(0.5)
                continue
            try:
                output.deliver(item)
            except DeliveryRefused as exc:
                log.error("%s of line %s refused seq %d for good: %s", output.name, line_id, item.seq, exc)
                self._count_failure(line_id, output.name, "refused")
                self.outbox.refused(line_id, output.name, item.seq, str(exc))
            except Exception as exc:  # noqa: BLE001 - an output's library error must not end the delivery thread
                failures += 1
                self._count_failure(line_id, output.name, "retry")
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "%s of line %s: seq %d not delivered after %d attempt(s): %s",
                        output.name,
                        line_id,
                        item.seq,
                        failures,
                        exc if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}",
                    )
                self._stop.wait(self._backoff(failures))
                continue
            else:
                self.outbox.delivered(line_id, output.name, item.seq)
                if self.metrics is not None:
                    self.metrics.delivered.labels(line_id, output.name).inc()
                    self.metrics.delivery_seconds.labels(output.name).observe(max(0.0, time.time() - item.created_at))
            if failures:
                log.info("%s of line %s delivering again after %d failed attempts", output.name, line_id, failures)
                failures = 0
            self.update_backlog()

    def _backoff(self, failures: int) -> float:
        step = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1))
        return step / 2 + self.rng.uniform(0, step / 2)

    def _count_failure(self, line_id: str, output: str, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_failures.labels(line_id, output, kind).inc()
