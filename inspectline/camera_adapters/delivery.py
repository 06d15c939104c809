"""Delivery with several posts in flight per camera, settled strictly in capture order.

One post at a time caps a camera at 1 / service latency (about 4 frames/s with ResNet50 on a CPU),
though the service batches frames from many requests. Here up to ``max_in_flight`` frames are posted at
once by a small thread pool, in capture order; their answers may come back in any order, but a frame
is *settled* (results log, ``source.settle``, removal from the spool, metrics) only once every frame
before it has been, so the log and the spool keep capture order exactly as with one post at a time.
At most ``max_in_flight`` frames are taken and unsettled at any time, which bounds memory.

Failures, per frame:

* a retryable answer (connection error, timeout, 408, 429, 503, an answer without the service's JSON
  envelope) means an outage: every taken frame not yet on disk is spooled, new frames stop being taken
  and only one post is in flight (the oldest unanswered frame, retried with backoff and jitter) until
  the service answers again; then the window opens up again;
* the service's own 5xx for a frame (``Retry.server_error``) is retried the same way, and after
  ``quarantine_after`` such answers the frame is set aside in the spool's ``quarantine/`` folder with
  the reason, settled as ``quarantined`` (counted in ``inspect_camera_frames_quarantined_total``), and
  the queue moves on;
* a frame the service answers with 409 ``frame_id_conflict`` (its id was judged before for other
  bytes; see ``uploader.classify``) is quarantined the same way at once, with the service's reason and
  both content hashes, and never retried.

A frame the service answered but that is not settled when the adapter stops stays spooled and is sent
again by the next run; its stable frame id makes the service answer from memory, and the results log
writes each frame id once.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inspectline.camera_adapters.source import Frame, FrameSource, Outcome
from inspectline.camera_adapters.uploader import Retry, Uploader, UploadSettings, backoff_delay
from inspectline.monitoring.metrics import CameraMetrics

if TYPE_CHECKING:
    from inspectline.camera_adapters.results_log import ResultsLog
    from inspectline.camera_adapters.runner import RunSummary, _Backlog

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.2


@dataclass
class _Slot:
    """A taken frame until it is settled."""

    frame: Frame
    spooled: bool
    first_sent: float
    attempts: int = 0
    server_errors: int = 0
    in_flight: bool = False
    retry_at: float | None = None
    answer: Outcome | None = None


@dataclass(frozen=True)
class DeliveryLimits:
    max_in_flight: int
    quarantine_after: int


class Delivery:
    """The delivery thread's state for one adapter run; :meth:`run` returns when done or stopped."""

    def __init__(
        self,
        backlog: _Backlog,
        uploader: Uploader,
        source: FrameSource,
        results: ResultsLog | None,
        metrics: CameraMetrics,
        labels: tuple[str, str],
        summary: RunSummary,
        upload: UploadSettings,
        limits: DeliveryLimits,
        rng: random.Random,
    ):
        self.backlog, self.uploader, self.source, self.results = backlog, uploader, source, results
        self.metrics, self.labels, self.summary, self.upload, self.limits = metrics, labels, summary, upload, limits
        self.rng = rng
        self.window: dict[int, _Slot] = {}  # by seq, in capture order
        # Answers from the posting threads, and None whenever the capture thread queued a frame.
        self.events: queue.SimpleQueue[tuple[int, Outcome | Retry] | None] = queue.SimpleQueue()
        backlog.on_put = lambda: self.events.put(None)
        self.failures = 0  # retryable answers in a row: > 0 means one post at a time
        self.outage_started = 0.0

    def run(self, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(self.limits.max_in_flight, thread_name_prefix=f"post-{self.labels[1]}")
        try:
            while not stop.is_set() and not self.backlog.drain_time_over():
                self._send(pool, stop)
                if not self.window:
                    if self.backlog.exhausted():
                        return
                    continue
                self._handle_events(self._wait())
            # Stopping: no new posts or retries, but the posts under way are answered and settled.
            deadline = time.monotonic() + self.upload.timeout_s + self.upload.connect_timeout_s
            while any(s.in_flight for s in self.window.values()) and time.monotonic() < deadline:
                self._handle_events(min(_IDLE_WAIT_S, deadline - time.monotonic()))
        finally:
            self.backlog.on_put = None
            pool.shutdown(wait=False, cancel_futures=True)
            for slot in self.window.values():  # taken but unsettled: on disk for the next run
                if not slot.spooled:
                    slot.spooled = self.backlog.keep(slot.frame)

    def _handle_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` for answers, take in all that came, and settle what is next in order."""
        try:
            events = [self.events.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return
        while not self.events.empty():
            events.append(self.events.get())
        for event in events:
            if event is not None:  # None: a new frame was queued, _send takes it
                self._answered(*event)
        self._settle_in_order()

    def _send(self, pool: ThreadPoolExecutor, stop: threading.Event) -> None:
        """Retries that are due, then new frames, up to the in-flight limit (one during an outage)."""
        limit = 1 if self.failures else self.limits.max_in_flight
        in_flight = sum(s.in_flight for s in self.window.values())
        now = time.monotonic()
        for seq, slot in self._retry_candidates():
            if in_flight >= limit:
                return
            if slot.retry_at <= now:
                self._post(pool, seq, slot)
                in_flight += 1
        # During an outage the one post in flight is the oldest waiting frame; a new one only when none waits.
        while (
            (not self.failures or not self.window)
            and in_flight < limit
            and len(self.window) < self.limits.max_in_flight
        ):
            item = self.backlog.take(stop, timeout=0 if self.window else _IDLE_WAIT_S)
            if item is None:
                return
            frame, spooled = item
            slot = _Slot(frame, spooled, time.monotonic())
            self.window[frame.seq] = slot
            self._post(pool, frame.seq, slot)
            in_flight += 1

    def _retry_candidates(self) -> list[tuple[int, _Slot]]:
        """Frames waiting for another attempt; during an outage only the oldest (the probe)."""
        waiting = [(seq, s) for seq, s in self.window.items() if s.retry_at is not None and not s.in_flight]
        return waiting[:1] if self.failures else waiting

    def _post(self, pool: ThreadPoolExecutor, seq: int, slot: _Slot) -> None:
        slot.in_flight, slot.retry_at = True, None
        frame = slot.frame

        def attempt() -> None:
            try:
                answer = self.uploader.post(frame)
            except Exception as exc:  # noqa: BLE001 - an unexpected error is one more failed attempt, not a lost frame
                answer = Retry(f"{type(exc).__name__}: {exc}")
            self.events.put((seq, answer))

        pool.submit(attempt)

    def _wait(self) -> float:
        """Until the next answer, or the next retry that is due and may be sent."""
        limit = 1 if self.failures else self.limits.max_in_flight
        if sum(s.in_flight for s in self.window.values()) >= limit:
            return _IDLE_WAIT_S  # an answer wakes the loop before that
        due = [slot.retry_at - time.monotonic() for _, slot in self._retry_candidates()]
        return max(0.0, min([_IDLE_WAIT_S, *due]))

    def _answered(self, seq: int, answer: Outcome | Retry) -> None:
        slot = self.window[seq]
        slot.in_flight = False
        slot.attempts += 1
        if isinstance(answer, Outcome):
            if answer.kind == "quarantined":  # the service says a person must see this frame: no retry helps
                body = answer.body
                reason = f"HTTP {answer.status} {body.get('error')}: {body.get('detail', '')}"
                hashes = {k: body[k] for k in ("first_sha256", "sent_sha256") if k in body}
                answer = self._quarantine(slot, reason, answer.status, **hashes)
            slot.answer = answer
            if self.failures:
                for other in self.window.values():  # the outage is over: the frames held back go now
                    if other.retry_at is not None:
                        other.retry_at = time.monotonic()
                log.warning(
                    "service answering again after %d failed attempts in %.1f s; %d spooled frames to deliver",
                    self.failures,
                    time.monotonic() - self.outage_started,
                    len(self.backlog.spool),
                )
                self.failures = 0
            self.backlog.recovered()
            return
        self.summary.retries += 1
        self.metrics.retries.labels(*self.labels).inc()
        slot.server_errors += answer.server_error
        if answer.server_error and slot.server_errors >= self.limits.quarantine_after:
            reason = f"{slot.server_errors} answers with a server error, the last: {answer.reason}"
            slot.answer = self._quarantine(slot, reason, answer.status)
            self.failures = 0  # the service answers; it is this frame it cannot judge
            self.backlog.recovered()
            return
        self.failures += 1
        for other in self.window.values():  # an outage may be starting: everything taken goes to disk
            if not other.spooled:
                other.spooled = self.backlog.keep(other.frame)
        self.backlog.outage()
        if self.failures == 1:
            self.outage_started = time.monotonic()
            log.warning(
                "frame %s not delivered (%s); spooling frames to %s and retrying",
                slot.frame.frame_id,
                answer.reason,
                self.backlog.spool.root,
            )
        elif self.failures % 10 == 0:
            log.warning(
                "still no answer after %d attempts (%s); %d frames spooled",
                self.failures,
                answer.reason,
                len(self.backlog.spool),
            )
        slot.retry_at = time.monotonic() + backoff_delay(slot.attempts, self.upload, answer.retry_after_s, self.rng)

    def _quarantine(self, slot: _Slot, reason: str, status: int | None, **details: str) -> Outcome:
        """Set the frame aside in the spool's ``quarantine/`` with ``reason``; counted, settled as quarantined."""
        path = self.backlog.spool.quarantine(
            slot.frame, {"reason": reason, "attempts": slot.attempts, "status": status, **details}
        )
        self.summary.quarantined += 1
        self.metrics.quarantined.labels(*self.labels).inc()
        log.error("frame %s quarantined to %s after %s; moving on", slot.frame.frame_id, path, reason)
        return Outcome("quarantined", status, {"error": "quarantined", "detail": reason, "path": str(path)})

    def _settle_in_order(self) -> None:
        while self.window:
            seq, slot = next(iter(self.window.items()))
            if slot.answer is None:
                return
            del self.window[seq]
            answer, frame = slot.answer, slot.frame
            self.metrics.post_seconds.labels(*self.labels).observe(time.monotonic() - slot.first_sent)
            self._count(answer, frame)
            if self.results is not None:
                self.results.append(frame, answer, self.uploader.line_id)
            self.source.settle(frame, answer)
            self.backlog.settled(frame, slot.spooled)

    def _count(self, answer: Outcome, frame: Frame) -> None:
        labels, summary = self.labels, self.summary
        if answer.kind == "judged":
            summary.judged += 1
            summary.duplicates += bool(answer.body.get("duplicate"))
            self.metrics.sent.labels(*labels).inc()
        elif answer.kind == "rejected":
            summary.rejected += 1
            self.metrics.rejected.labels(*labels, str(answer.status)).inc()
            log.error("frame %s rejected by the service: %s", frame.frame_id, answer.reason)
