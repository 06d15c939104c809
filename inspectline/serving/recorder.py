"""Writes judged frames to the frame store off the request path, and never loses one.

The line monitor hands every micro-batch of frame records to :meth:`FrameRecorder.submit`, which only
appends to an in-memory backlog. One writer thread drains the backlog into the store in batches.
When the store is unavailable (database down, disk full, network storage unreachable) the writer
keeps the batch and retries with exponential backoff, so verdicts keep flowing to the line while
the backlog grows. Past ``max_backlog`` frames the oldest part of the backlog is spilled to a local
spool folder (one fsynced JSON file per batch, images base64-encoded) and read back, oldest first,
once the store accepts writes again. On shutdown the writer flushes what it can and spills the rest.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from inspectline.errors import StoreError
from inspectline.files import atomic_write_json
from inspectline.store import FrameRecord, FrameStore, ShadowVerdict, check_record

log = logging.getLogger("ray.serve")


class FrameRecorder:
    """A bounded, retrying, spilling writer in front of a :class:`FrameStore`."""

    def __init__(
        self,
        open_store: Callable[[], FrameStore],
        *,
        spool_dir: Path,
        max_backlog: int = 20_000,
        batch_size: int = 256,
        max_backoff_s: float = 30.0,
    ):
        self._open_store = open_store
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.max_backlog, self.batch_size, self.max_backoff_s = max_backlog, batch_size, max_backoff_s
        self._frames: deque[FrameRecord] = deque()
        self._shadows: deque[ShadowVerdict] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._store: FrameStore | None = None
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="frame-recorder", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Frames not yet in the store: in memory plus spilled to disk."""
        with self._lock:
            in_memory = len(self._frames)
        return in_memory + sum(_spooled_count(p) for p in self._spool_files())

    def submit(self, frames: Sequence[FrameRecord], shadows: Sequence[ShadowVerdict] = ()) -> int:
        """Queue records for writing; never blocks on the store. Returns how many were refused.

        Records are checked here, not at write time: a record the store would refuse must not
        hold up the backlog behind it (failed writes are retried, so only outages should fail).
        """
        valid = []
        for record in frames:
            try:
                check_record(record)
                valid.append(record)
            except StoreError as exc:
                log.error("frame record refused, not stored: %s", exc)
        refused = len(frames) - len(valid)
        frames = valid
        with self._lock:
            self._frames.extend(frames)
            self._shadows.extend(shadows)
            spill_frames = [self._frames.popleft() for _ in range(max(0, len(self._frames) - self.max_backlog))]
            spill_shadows = [self._shadows.popleft() for _ in range(max(0, len(self._shadows) - self.max_backlog))]
        if spill_frames or spill_shadows:
            self._spill(spill_frames, spill_shadows)
        self._wake.set()
        return refused

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush for up to ``timeout_s``; whatever is left goes to the spool for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        with self._lock:
            frames, shadows = list(self._frames), list(self._shadows)
            self._frames.clear()
            self._shadows.clear()
        if frames or shadows:
            self._spill(frames, shadows)
        if self._store is not None:
            self._store.close()

    # --- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                while self._drain_once():
                    backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - any store failure: keep the records and retry
                self.failures += 1
                log.warning(
                    "frame store unavailable (%s); %d frames waiting, retrying in %.1f s", exc, self.backlog, backoff
                )
                self._store = None
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if self._stop.is_set():
                return

    def _drain_once(self) -> bool:
        """Write one batch (spooled files first, they are older); True when something was written."""
        spooled = self._spool_files()
        if spooled:
            frames, shadows = _read_spool(spooled[0])
            self._write(frames, shadows)
            spooled[0].unlink()
            return True
        with self._lock:
            frames = [self._frames[i] for i in range(min(self.batch_size, len(self._frames)))]
            shadows = list(self._shadows)
        if not frames and not shadows:
            return False
        self._write(frames, shadows)
        with self._lock:  # remove only after the store accepted them
            for _ in frames:
                self._frames.popleft()
            for _ in shadows:
                self._shadows.popleft()
        return True

    def _write(self, frames: list[FrameRecord], shadows: list[ShadowVerdict]) -> None:
        if self._store is None:
            self._store = self._open_store()
        if frames:
            self._store.add_frames(frames)
            self.written += len(frames)
        if shadows:
            self._store.add_shadow_verdicts(shadows)

    # --- spool -----------------------------------------------------------------------------------
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("batch-*.json"))

    def _spill(self, frames: list[FrameRecord], shadows: list[ShadowVerdict]) -> None:
        doc = {"frames": [_encode(asdict(f)) for f in frames], "shadows": [_encode(asdict(v)) for v in shadows]}
        # the frame count is in the name, so the backlog gauge never has to read a spooled file
        final = self.spool_dir / f"batch-{time.time_ns():020d}-{len(frames)}.json"
        atomic_write_json(final, doc, indent=None, sync_dir=True)
        log.error("frame store backlog over %d frames: spilled %d frames to %s", self.max_backlog, len(frames), final)


def _encode(doc: dict) -> dict:
    """JSON-safe: datetimes as ISO strings, bytes as base64, each tagged so decoding is exact."""
    out = {}
    for key, value in doc.items():
        if isinstance(value, datetime):
            value = {"$datetime": value.isoformat()}
        elif isinstance(value, bytes):
            value = {"$base64": base64.b64encode(value).decode()}
        out[key] = value
    return out


def _decode(doc: dict) -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict) and "$datetime" in value:
            value = datetime.fromisoformat(value["$datetime"])
        elif isinstance(value, dict) and "$base64" in value:
            value = base64.b64decode(value["$base64"])
        out[key] = value
    return out


def _read_spool(path: Path) -> tuple[list[FrameRecord], list[ShadowVerdict]]:
    doc = json.loads(path.read_text())
    return [FrameRecord(**_decode(d)) for d in doc["frames"]], [
        ShadowVerdict(**_decode(d)) for d in doc.get("shadows", [])
    ]


def _spooled_count(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])
