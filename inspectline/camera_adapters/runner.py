"""The adapter: a source's frames -> bounded memory queue or disk spool -> the service, in capture order.

Two threads. The capture thread takes frames from the source, numbers them (``seq``, capture order,
continuing after the highest spooled number so the order holds across restarts) and queues them: in
memory while the service answers and the spool is empty, otherwise (memory full, service unreachable,
older frames still spooled) in the fsynced disk spool. The delivery thread (the caller's) always sends
the lowest-numbered pending frame, one at a time, so verdicts arrive, are logged and are settled in
capture order. A frame that meets a connection error, 408, 429 or 5xx is retried with backoff and
jitter for as long as it takes; before each wait it and everything in memory are written to the spool,
so an outage of any length (or a crash during one) costs no frame while there is disk to hold them.
Only a full spool drops a frame, counted in ``inspect_camera_frames_dropped_total`` and logged as an
error.

Restart: spooled frames are delivered first; a source that yields a frame whose id is already spooled
(a folder file still in the inbox, a replay position not yet settled) has it skipped, and the results
log writes each frame id once even if the service is asked again and answers ``"duplicate": true``.

    summary = run_camera(ReplaySettings(data=DataConfig(), fps=5), AdapterSettings(camera_id="cam-1"))
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import httpx
from prometheus_client import start_http_server
from pydantic import Field, field_validator, model_validator

from inspectline.camera_adapters.folder import FolderSettings, FolderSource
from inspectline.camera_adapters.replay import ReplaySettings, ReplaySource
from inspectline.camera_adapters.source import Frame, FrameSource, Outcome, Settings, SourceState
from inspectline.camera_adapters.spool import Spool
from inspectline.camera_adapters.uploader import Retry, Uploader, UploadSettings, backoff_delay
from inspectline.camera_adapters.video import VideoSettings, VideoSource
from inspectline.errors import ConfigError
from inspectline.ids import check_id
from inspectline.monitoring.metrics import CameraMetrics

log = logging.getLogger(__name__)


class AdapterSettings(Settings):
    """Everything about an adapter that does not depend on its source."""

    line_id: str = "line-1"
    camera_id: str = "cam-1"
    upload: UploadSettings = UploadSettings()
    spool_dir: Path = Field(
        None, description="one folder per camera: spooled frames and source progress (default spool/CAMERA_ID)"
    )
    spool_max_bytes: int = Field(
        2 * 2**30, ge=1, description="spool capacity; beyond it frames are dropped (and counted)"
    )
    queue_size: int = Field(
        64, ge=0, description="frames held in memory; 0 writes every frame to the spool before sending it"
    )
    results_log: Path | None = Field(None, description="JSON lines, one per settled frame, in capture order")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="serve Prometheus metrics on this port")
    drain_timeout_s: float | None = Field(
        None, gt=0, description="after a finite source ends, stop delivering after this long (the rest stays spooled)"
    )

    @model_validator(mode="before")
    @classmethod
    def _spool_per_camera(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("spool_dir") is None:
            values = {**values, "spool_dir": Path("spool") / str(values.get("camera_id", "cam-1"))}
        return values

    @field_validator("line_id", "camera_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return check_id(value, "id")


@dataclass
class RunSummary:
    """What one adapter run did (the same counts its metrics export)."""

    captured: int = 0
    skipped: int = 0
    judged: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    dropped: int = 0
    spooled_peak: int = 0
    spooled_left: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_camera(
    source: FolderSettings | VideoSettings | ReplaySettings,
    settings: AdapterSettings,
    *,
    stop: threading.Event | None = None,
    metrics: CameraMetrics | None = None,
    transport: httpx.BaseTransport | None = None,
) -> RunSummary:
    """Build the source the settings describe and run the adapter until it ends or ``stop`` is set."""
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    with _spool_lock(settings.spool_dir):
        return run_adapter(create_source(source, settings), settings, stop=stop, metrics=metrics, transport=transport)


def create_source(source: FolderSettings | VideoSettings | ReplaySettings, settings: AdapterSettings) -> FrameSource:
    """The source for a settings model; its progress file lives in the adapter's spool folder."""
    state = SourceState(settings.spool_dir / "source-state.json")
    if isinstance(source, FolderSettings):
        return FolderSource(source, settings.camera_id)
    if isinstance(source, VideoSettings):
        return VideoSource(source, settings.camera_id, state)
    if isinstance(source, ReplaySettings):
        return ReplaySource(source, settings.camera_id, state)
    msg = f"unknown source settings {type(source).__name__}; expected FolderSettings, VideoSettings or ReplaySettings"
    raise ConfigError(msg)


def run_adapter(
    source: FrameSource,
    settings: AdapterSettings,
    *,
    stop: threading.Event | None = None,
    metrics: CameraMetrics | None = None,
    transport: httpx.BaseTransport | None = None,
    rng: random.Random | None = None,
) -> RunSummary:
    """Feed ``source`` to the service until the source ends and every frame is settled, or ``stop`` is set."""
    started = time.monotonic()
    stop = stop or threading.Event()
    metrics = metrics or CameraMetrics()
    labels = (settings.line_id, settings.camera_id)
    summary = RunSummary()
    spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
    reconnects = metrics.reconnects.labels(*labels)  # exported at 0 from the start, for every kind of source
    if isinstance(source, VideoSource):
        source.on_reconnect = reconnects.inc
    backlog = _Backlog(
        spool, settings.queue_size, metrics.spooled.labels(*labels), summary, drain_timeout_s=settings.drain_timeout_s
    )
    capture_errors: list[BaseException] = []
    capture = threading.Thread(
        target=_capture,
        name=f"capture-{settings.camera_id}",
        args=(source, backlog, stop, metrics, labels, summary, capture_errors),
        daemon=True,
    )
    with contextlib.ExitStack() as cleanup:
        results = cleanup.enter_context(ResultsLog(settings.results_log)) if settings.results_log else None
        server = _start_metrics_server(settings.metrics_port, metrics)
        if server is not None:
            cleanup.callback(server.server_close)
            cleanup.callback(server.shutdown)
        uploader = cleanup.enter_context(
            contextlib.closing(Uploader(settings.upload, settings.line_id, transport=transport))
        )
        try:
            capture.start()
            _deliver(
                backlog,
                uploader,
                source,
                results,
                metrics,
                labels,
                summary,
                stop,
                settings.upload,
                rng or random.Random(),
            )
        finally:
            stop.set()
            capture.join()
            backlog.spill_memory()  # frames not yet sent survive until the next start
    summary.spooled_left = len(spool)
    summary.seconds = time.monotonic() - started
    if capture_errors:
        raise capture_errors[0]
    log.info("camera %s: %s", settings.camera_id, summary.to_dict())
    return summary


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on the first SIGINT/SIGTERM (queued frames are spooled, not lost); a second one acts as usual."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def first_signal(*_: object) -> None:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, first_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ResultsLog:
    """JSON lines for the line controller: one record per settled frame id, in capture order, fsynced.

    A record holds the adapter's fields (frame and part id, ``seq``, capture time, ``outcome`` judged or
    rejected, HTTP ``status``) and the service's answer (verdict, probabilities, model version,
    ``duplicate``; or ``error`` and ``detail``). Dropped frames never reached the service and have no
    record: they are counted in the metrics and logged as errors.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.logged: set[str] = set()
        torn = False
        if self.path.exists():
            text = self.path.read_text()
            torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                with contextlib.suppress(ValueError):  # a line torn by a crash: its frame is logged again
                    self.logged.add(json.loads(line)["frame_id"])
        self._fh: IO[str] = self.path.open("a")
        if torn:
            self._fh.write("\n")

    def append(self, frame: Frame, outcome: Outcome, line_id: str) -> bool:
        """Write the record unless this frame id was logged before; True when written."""
        if frame.frame_id in self.logged:
            return False
        record = {
            "frame_id": frame.frame_id,
            "seq": frame.seq,
            "line_id": line_id,
            "camera_id": frame.camera_id,
            "part_id": frame.part_id,
            "captured_at": frame.captured_at.isoformat(),
            "outcome": outcome.kind,
            "status": outcome.status,
            "settled_at": datetime.now(timezone.utc).isoformat(),
        }
        record.update({k: v for k, v in outcome.body.items() if k not in record})
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.logged.add(frame.frame_id)
        return True

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Backlog:
    """Pending frames: a bounded deque in memory plus the disk spool; ``next`` is always the oldest."""

    def __init__(
        self, spool: Spool, queue_size: int, gauge, summary: RunSummary, *, drain_timeout_s: float | None = None
    ):
        self.spool, self.queue_size, self.gauge, self.summary = spool, queue_size, gauge, summary
        self.drain_timeout_s = drain_timeout_s
        self.memory: deque[Frame] = deque()
        self.cond = threading.Condition()
        self.outage = False
        self.capture_done_at: float | None = None
        self.next_seq = spool.max_seq() + 1
        with self.cond:
            self._changed()

    def take_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def put(self, frame: Frame) -> bool:
        """Queue a captured frame; False when it could not be kept (the spool is full)."""
        with self.cond:
            # Memory only while nothing older is spooled and the service answers: that keeps memory
            # short-lived and puts everything that has to wait on disk.
            if not self.outage and not len(self.spool) and len(self.memory) < self.queue_size:
                self.memory.append(frame)
            elif not self.spool.put(frame):
                return False
            self._changed()
            return True

    def next(self, stop: threading.Event) -> tuple[Frame, bool] | None:
        """The lowest-numbered pending frame and whether it is spooled; None when done, stopped or out of drain time."""
        with self.cond:
            while not self.memory and not len(self.spool):
                if self.capture_done_at is not None or stop.is_set():
                    return None
                self.cond.wait(0.2)
            if stop.is_set() or self._drain_time_over():
                return None
            spool_head = self.spool.head_seq()
            if self.memory and (spool_head is None or self.memory[0].seq < spool_head):
                return self.memory.popleft(), False
            return self.spool.head(), True

    def failed(self, frame: Frame, spooled: bool) -> None:
        """A retryable failure: put the frame and everything in memory on disk before waiting."""
        with self.cond:
            self.outage = True
            if not spooled:
                self.memory.appendleft(frame)
            self._spill()

    def settled(self, frame: Frame, spooled: bool) -> None:
        with self.cond:
            self.outage = False
            if spooled:
                self.spool.remove(frame)
            self._changed()

    def finish_capture(self) -> None:
        with self.cond:
            self.capture_done_at = time.monotonic()
            self.cond.notify_all()

    def _drain_time_over(self) -> bool:
        return (
            self.capture_done_at is not None
            and self.drain_timeout_s is not None
            and time.monotonic() - self.capture_done_at > self.drain_timeout_s
        )

    def spill_memory(self) -> None:
        with self.cond:
            self._spill()

    def _spill(self) -> None:
        # Oldest first, as far as the spool takes them; frames it cannot hold stay in memory and are
        # still sent in order, since ``next`` compares sequence numbers across both.
        while self.memory and self.spool.put(self.memory[0]):
            self.memory.popleft()
        self._changed()

    def _changed(self) -> None:
        spooled = len(self.spool)
        self.gauge.set(spooled)
        self.summary.spooled_peak = max(self.summary.spooled_peak, spooled)
        self.cond.notify_all()


def _capture(
    source: FrameSource,
    backlog: _Backlog,
    stop: threading.Event,
    metrics: CameraMetrics,
    labels: tuple[str, str],
    summary: RunSummary,
    errors: list[BaseException],
) -> None:
    try:
        for frame in source.frames(stop):
            if frame.frame_id in backlog.spool:  # taken in an earlier run and still waiting on disk
                summary.skipped += 1
                continue
            frame = replace(frame, seq=backlog.take_seq())
            summary.captured += 1
            metrics.captured.labels(*labels).inc()
            if not backlog.put(frame):
                summary.dropped += 1
                metrics.dropped.labels(*labels).inc()
                log.error(
                    "DROPPED frame %s of camera %s: the disk spool %s is full (%d frames, %.1f MiB of %.1f MiB). "
                    "Frames are being lost until the service drains the spool; free disk or raise --spool-max-bytes.",
                    frame.frame_id,
                    frame.camera_id,
                    backlog.spool.root,
                    len(backlog.spool),
                    backlog.spool.total_bytes / 2**20,
                    backlog.spool.max_bytes / 2**20,
                )
                source.settle(frame, Outcome("dropped"))
            if stop.is_set():
                break
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which re-raises it
        errors.append(exc)
        stop.set()
    finally:
        backlog.finish_capture()


def _deliver(
    backlog: _Backlog,
    uploader: Uploader,
    source: FrameSource,
    results: ResultsLog | None,
    metrics: CameraMetrics,
    labels: tuple[str, str],
    summary: RunSummary,
    stop: threading.Event,
    upload: UploadSettings,
    rng: random.Random,
) -> None:
    failures = 0
    outage_started = 0.0
    first_attempt: dict[str, float] = {}
    while (item := backlog.next(stop)) is not None:
        frame, spooled = item
        sent_at = first_attempt.setdefault(frame.frame_id, time.monotonic())
        answer = uploader.post(frame)
        if isinstance(answer, Retry):
            failures += 1
            summary.retries += 1
            metrics.retries.labels(*labels).inc()
            backlog.failed(frame, spooled)
            if failures == 1:
                outage_started = time.monotonic()
                log.warning(
                    "frame %s not delivered (%s); spooling frames to %s and retrying",
                    frame.frame_id,
                    answer.reason,
                    backlog.spool.root,
                )
            elif failures % 10 == 0:
                log.warning(
                    "still no answer after %d attempts (%s); %d frames spooled",
                    failures,
                    answer.reason,
                    len(backlog.spool),
                )
            if stop.wait(backoff_delay(failures, upload, answer.retry_after_s, rng)):
                return
            continue
        if failures:
            log.warning(
                "service answering again after %d failed attempts in %.1f s; %d spooled frames to deliver",
                failures,
                time.monotonic() - outage_started,
                len(backlog.spool),
            )
            failures = 0
        metrics.post_seconds.labels(*labels).observe(time.monotonic() - first_attempt.pop(frame.frame_id, sent_at))
        _count(answer, frame, metrics, labels, summary)
        if results is not None:
            results.append(frame, answer, uploader.line_id)
        source.settle(frame, answer)
        backlog.settled(frame, spooled)


def _count(answer: Outcome, frame: Frame, metrics: CameraMetrics, labels: tuple[str, str], summary: RunSummary) -> None:
    if answer.kind == "judged":
        summary.judged += 1
        summary.duplicates += bool(answer.body.get("duplicate"))
        metrics.sent.labels(*labels).inc()
    else:
        summary.rejected += 1
        metrics.rejected.labels(*labels, str(answer.status)).inc()
        log.error("frame %s rejected by the service: %s", frame.frame_id, answer.reason)


def _start_metrics_server(port: int | None, metrics: CameraMetrics):
    if port is None:
        return None
    try:
        server, _ = start_http_server(port, registry=metrics.registry)
    except OSError as exc:
        msg = f"cannot serve metrics on port {port}: {exc.strerror or exc}; choose another --metrics-port"
        raise ConfigError(msg) from None
    return server


@contextlib.contextmanager
def _spool_lock(folder: Path) -> Iterator[None]:
    """One adapter per spool folder: two writers would interleave sequence numbers and progress."""
    with (folder / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"spool folder {folder} is in use by another adapter; give each camera its own --spool-dir"
            raise ConfigError(msg) from None
        yield
