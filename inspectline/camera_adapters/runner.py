"""The adapter: a source's frames -> bounded memory queue or disk spool -> the service, in capture order.

The capture thread takes frames from the source, numbers them (``seq``, capture order, continuing
after the highest spooled number so the order holds across restarts) and queues them: in memory while
the service answers and the spool is empty, otherwise (memory full, service unreachable, older frames
still spooled) in the fsynced disk spool. The delivery loop (the caller's thread, ``delivery.py``)
takes the lowest-numbered pending frames, keeps up to ``max_in_flight`` posts going at once, and
settles answers strictly in capture order: the results log, the source and the spool see the same
order as with one post at a time. A frame that meets a connection error, 408, 429 or 5xx is retried
with backoff and jitter; before each wait it and everything in memory are written to the spool, so an
outage of any length (or a crash during one) costs no frame while there is disk to hold them. A frame
the service keeps failing on with a 5xx is quarantined after ``quarantine_after`` attempts, so the
queue moves on. Only a full spool drops a frame, counted in ``inspect_camera_frames_dropped_total``
and logged as an error.

Restart: spooled frames are delivered first; a source that yields a frame whose id is already spooled
(a folder file still in the inbox, a replay position not yet settled) has it skipped, and the results
log writes each frame id once even if the service is asked again and answers ``"duplicate": true``.

    summary = run_camera(ReplaySettings(data=DataConfig(), fps=5), AdapterSettings(camera_id="cam-1"))
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import start_http_server
from pydantic import Field, field_validator, model_validator

from inspectline.camera_adapters.delivery import Delivery, DeliveryLimits
from inspectline.camera_adapters.folder import FolderSettings, FolderSource
from inspectline.camera_adapters.replay import ReplaySettings, ReplaySource
from inspectline.camera_adapters.results_log import ResultsLog
from inspectline.camera_adapters.source import Frame, FrameSource, Outcome, Settings, SourceState
from inspectline.camera_adapters.spool import Spool
from inspectline.camera_adapters.uploader import Uploader, UploadSettings
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
    max_in_flight: int = Field(
        4, ge=1, le=64, description="posts in flight at once; frames are still settled and logged in capture order"
    )
    quarantine_after: int = Field(
        8, ge=1, description="5xx answers for one frame before it goes to the quarantine folder and the queue moves on"
    )
    results_log: Path | None = Field(None, description="JSON lines, one per settled frame, in capture order")
    results_log_max_bytes: int | None = Field(
        64 * 2**20, ge=4096, description="rotate the results log before it grows past this; None: never by size"
    )
    results_log_daily: bool = Field(True, description="rotate the results log when a new UTC day starts")
    results_log_keep: int = Field(30, ge=0, description="rotated results logs kept (oldest deleted)")
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
    quarantined: int = 0
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
        results = (
            cleanup.enter_context(
                ResultsLog(
                    settings.results_log,
                    max_bytes=settings.results_log_max_bytes,
                    daily=settings.results_log_daily,
                    keep=settings.results_log_keep,
                )
            )
            if settings.results_log
            else None
        )
        server = _start_metrics_server(settings.metrics_port, metrics)
        if server is not None:
            cleanup.callback(server.server_close)
            cleanup.callback(server.shutdown)
        uploader = cleanup.enter_context(
            contextlib.closing(Uploader(settings.upload, settings.line_id, transport=transport))
        )
        delivery = Delivery(
            backlog,
            uploader,
            source,
            results,
            metrics,
            labels,
            summary,
            settings.upload,
            DeliveryLimits(settings.max_in_flight, settings.quarantine_after),
            rng or random.Random(),
        )
        try:
            capture.start()
            delivery.run(stop)
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


class _Backlog:
    """Pending frames: a bounded deque in memory plus the disk spool, handed out oldest first.

    Frames up to ``taken`` have been handed to the delivery loop and are not settled yet (those that
    were spooled stay in the spool until settled); ``take`` hands out the next one.
    """

    def __init__(
        self, spool: Spool, queue_size: int, gauge, summary: RunSummary, *, drain_timeout_s: float | None = None
    ):
        self.spool, self.queue_size, self.gauge, self.summary = spool, queue_size, gauge, summary
        self.drain_timeout_s = drain_timeout_s
        self.memory: deque[Frame] = deque()
        self.cond = threading.Condition()
        self.in_outage = False
        self.capture_done_at: float | None = None
        self.next_seq = spool.max_seq() + 1
        self.taken = -1
        self.on_put: Callable[[], None] | None = None  # the delivery loop's wake-up
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
            if not self.in_outage and not len(self.spool) and len(self.memory) < self.queue_size:
                self.memory.append(frame)
            elif not self.spool.put(frame):
                return False
            self._changed()
        if self.on_put is not None:
            self.on_put()
        return True

    def take(self, stop: threading.Event, timeout: float) -> tuple[Frame, bool] | None:
        """The next frame after those taken and whether it is spooled; None if none comes within ``timeout``."""
        with self.cond:
            deadline = time.monotonic() + timeout
            while True:
                if stop.is_set() or self.drain_time_over():
                    return None
                spooled = self.spool.seq_after(self.taken)
                if self.memory and (spooled is None or self.memory[0].seq < spooled):
                    frame, on_disk = self.memory.popleft(), False
                    break
                if spooled is not None:
                    frame, on_disk = self.spool.get(spooled), True
                    break
                left = deadline - time.monotonic()
                if left <= 0 or self.capture_done_at is not None:
                    return None
                self.cond.wait(left)
            self.taken = frame.seq
            return frame, on_disk

    def exhausted(self) -> bool:
        """The source has ended and every frame was handed out (or the drain time is over)."""
        with self.cond:
            untaken = bool(self.memory) or self.spool.seq_after(self.taken) is not None
            return (self.capture_done_at is not None and not untaken) or self.drain_time_over()

    def keep(self, frame: Frame) -> bool:
        """Put a taken frame on disk (an outage may be starting); True when it is spooled."""
        with self.cond:
            kept = self.spool.put(frame)
            self._changed()
            return kept

    def outage(self) -> None:
        """A retryable failure: everything still in memory goes to disk, and new frames go there too."""
        with self.cond:
            self.in_outage = True
            self._spill()

    def recovered(self) -> None:
        with self.cond:
            self.in_outage = False

    def settled(self, frame: Frame, spooled: bool) -> None:
        with self.cond:
            if spooled:
                self.spool.remove(frame)
            self._changed()

    def finish_capture(self) -> None:
        with self.cond:
            self.capture_done_at = time.monotonic()
            self.cond.notify_all()
        if self.on_put is not None:
            self.on_put()

    def drain_time_over(self) -> bool:
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
        # still sent in order, since ``take`` compares sequence numbers across both.
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
