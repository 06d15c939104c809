"""The OpenCV source: ``cv2.VideoCapture`` on a video file, an RTSP/HTTP stream or a device index.

Two modes, chosen from ``source`` unless ``live`` says otherwise:

* **file** (a path): every frame in order, paced at ``fps`` (default: the file's own rate). The frame
  id is the file name plus the frame index, and the index after the last settled frame is kept in the
  spool folder, so a restarted adapter goes on where the line left off and a resent frame keeps its id.
* **live** (``rtsp://``, ``http(s)://``, a device index such as ``0``): frames are read as fast as the
  camera sends them (so OpenCV's buffer never lags behind) and at most ``fps`` of them per second are
  taken. A failed open or a dropped stream (``read`` fails) is retried with exponential backoff from
  ``reconnect_initial_s`` up to ``reconnect_max_s``, for as long as the adapter runs. A live frame cannot
  be captured twice, so its id only has to be unique: the UTC capture time plus a sequence number
  kept in the spool folder, e.g. ``20250301T101502123456-000042``.

Frames are PNG-encoded (lossless; ``encoding="jpeg"`` for slow links).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from inspectline.camera_adapters.source import Frame, Outcome, Pace, Settings, SourceState, safe_id
from inspectline.errors import ConfigError

log = logging.getLogger(__name__)

_STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")


class VideoSettings(Settings):
    """A cv2.VideoCapture source and its pacing."""

    source: str = Field(description="video file path, stream URL (rtsp://, http://) or device index (0, 1, ...)")
    fps: float | None = Field(
        None, gt=0, le=1000, description="frames per second at most; files default to their own rate"
    )
    live: bool | None = Field(None, description="None: URLs and device indexes are live, paths are files")
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames")
    encoding: Literal["png", "jpeg"] = "png"
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class VideoSource:
    """Frames from OpenCV; see the module docstring for ids, pacing and reconnects."""

    def __init__(self, settings: VideoSettings, camera_id: str, state: SourceState):
        self.settings = settings
        self.camera_id = camera_id
        self.state = state
        self.live = settings.live if settings.live is not None else is_stream(settings.source)
        if not self.live and not Path(settings.source).is_file():
            msg = (
                f"video file {settings.source} does not exist (for a stream give an rtsp:// or http:// "
                "URL, for a camera its device index)"
            )
            raise ConfigError(msg)
        self.reconnects = 0
        self.on_reconnect: Callable[[], None] = lambda: None  # the runner counts reconnects in its metrics
        self._saved = state.load()
        self._key = f"video:{settings.source}"
        if self._saved.get("source") != self._key:
            self._saved = {"source": self._key, "next_index": 0, "next_seq": 0}

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        return self._live(stop) if self.live else self._file(stop)

    def settle(self, frame: Frame, outcome: Outcome) -> None:
        """Files: remember the index after the last settled frame so a restart resumes there."""
        if self.live or frame.origin is None or outcome.kind == "dropped":
            return
        index = int(frame.origin.rsplit("#", 1)[1])
        if index + 1 > self._saved["next_index"]:
            self._saved["next_index"] = index + 1
            self.state.save(self._saved)

    def _file(self, stop: threading.Event) -> Iterator[Frame]:
        capture = cv2.VideoCapture(self.settings.source)
        if not capture.isOpened():
            msg = f"OpenCV cannot open the video file {self.settings.source}; is it a video in a format OpenCV reads?"
            raise ConfigError(msg)
        try:
            native = capture.get(cv2.CAP_PROP_FPS)
            fps = self.settings.fps or (native if 0 < native <= 1000 else None)
            start = int(self._saved["next_index"])
            if start:
                log.info(
                    "resuming %s at frame %d (frames before it were settled in an earlier run)",
                    self.settings.source,
                    start,
                )
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            stem = safe_id(Path(self.settings.source).stem)[:48]
            pace = Pace(fps)
            index = start
            while not stop.is_set() and not self._enough(index - start):
                ok, image = capture.read()
                if not ok:
                    return
                if not pace.wait(stop):
                    return
                yield self._frame(image, f"{stem}-{index:07d}", origin=f"{self.settings.source}#{index}")
                index += 1
        finally:
            capture.release()

    def _live(self, stop: threading.Event) -> Iterator[Frame]:
        source: str | int = int(self.settings.source) if self.settings.source.isdigit() else self.settings.source
        delay = self.settings.reconnect_initial_s
        taken = 0
        interval = 1.0 / self.settings.fps if self.settings.fps else 0.0
        last_taken = -float("inf")
        while not stop.is_set() and not self._enough(taken):
            capture = cv2.VideoCapture(source)
            try:
                if not capture.isOpened():
                    log.warning("cannot open %s; retrying in %.1f s", self.settings.source, delay)
                else:
                    while not stop.is_set() and not self._enough(taken):
                        ok, image = capture.read()
                        if not ok:
                            log.warning("stream %s dropped; reconnecting in %.1f s", self.settings.source, delay)
                            break
                        delay = (
                            self.settings.reconnect_initial_s
                        )  # frames flow again: the next drop starts the backoff afresh
                        now = time.monotonic()
                        if now - last_taken < interval:
                            continue
                        last_taken = now
                        stamp = datetime.now(timezone.utc)  # read() has just returned: this is the capture time
                        seq = self._saved["next_seq"]
                        self._saved["next_seq"] = seq + 1
                        self.state.save(self._saved)
                        yield self._frame(image, f"{stamp:%Y%m%dT%H%M%S%f}-{seq:06d}", captured_at=stamp)
                        taken += 1
            finally:
                capture.release()
            if stop.is_set() or self._enough(taken):
                return
            self.reconnects += 1
            self.on_reconnect()
            stop.wait(delay)
            delay = min(self.settings.reconnect_max_s, delay * 2)

    def _enough(self, taken: int) -> bool:
        return self.settings.max_frames is not None and taken >= self.settings.max_frames

    def _frame(
        self, image: np.ndarray, frame_id: str, *, origin: str | None = None, captured_at: datetime | None = None
    ) -> Frame:
        captured_at = captured_at or datetime.now(timezone.utc)  # when it was taken: before the encoding's time
        ext, content_type = (".png", "image/png") if self.settings.encoding == "png" else (".jpg", "image/jpeg")
        ok, encoded = cv2.imencode(ext, image)  # OpenCV frames are BGR; imencode writes them in the right colour order
        if not ok:
            msg = (
                f"OpenCV could not encode a {image.shape} frame from {self.settings.source} as {self.settings.encoding}"
            )
            raise ConfigError(msg)
        return Frame(
            frame_id=frame_id,
            camera_id=self.camera_id,
            captured_at=captured_at,
            image=encoded.tobytes(),
            content_type=content_type,
            origin=origin,
        )


def is_stream(source: str) -> bool:
    """Whether a VideoCapture source is a live stream or device rather than a file."""
    return source.isdigit() or source.lower().startswith(_STREAM_PREFIXES)
