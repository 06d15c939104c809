"""Makes judged frames and decided part verdicts durable in the frame store, and never loses one while it is down.

The line monitor calls :meth:`FrameRecorder.record` with each micro-batch of frames (in a worker thread)
and acknowledges the batch to the gateway only when it returns: by then every frame is either in the
store or in the recorder's spool on disk. So the gateway keeps each frame in its own journal until it is
durable here, and nothing accepted lives only in memory anywhere.

While the store is healthy a batch is written directly. When a write fails (database down, disk full,
network storage unreachable) the batch is spilled to the spool — one fsynced JSON file per batch, images
base64-encoded — and so are the following batches, without trying the store each time: a drain thread
retries with exponential backoff, writes the spool back oldest first, and only then lets batches go
straight to the store again. Memory is bounded by one batch; the spool by the disk. Part verdicts (from
the monitor's :class:`~inspectline.outputs.line.LineResults`) take the same path, in their own batches.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from inspectline.errors import StoreError
from inspectline.files import atomic_write_json
from inspectline.store import FrameRecord, FrameStore, PartRecord, ShadowVerdict, check_record
from inspectline.store.records import check_part

log = logging.getLogger("ray.serve")


class FrameRecorder:
    """Writes batches to a :class:`FrameStore`, spilling to ``spool_dir`` while it is unavailable."""

    def __init__(
        self,
        open_store: Callable[[], FrameStore],
        *,
        spool_dir: Path,
        max_backoff_s: float = 30.0,
        legacy_spool_dir: Path | None = None,
    ):
        self._open_store = open_store
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if legacy_spool_dir is not None:  # batches an earlier version spooled one folder up
            for path in Path(legacy_spool_dir).glob("batch-*.json"):
                path.rename(self.spool_dir / path.name)
        self.max_backoff_s = max_backoff_s
        self._store: FrameStore | None = None
        self._lock = threading.Lock()  # one writer at a time: the caller's thread or the drain thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._drain_forever, name="frame-recorder", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Frames waiting in the spool for the store."""
        return sum(_spooled_count(p) for p in self._spool_files())

    def record(
        self, frames: Sequence[FrameRecord], shadows: Sequence[ShadowVerdict] = (), parts: Sequence[PartRecord] = ()
    ) -> int:
        """Make a batch durable (stored, or spooled); returns how many records were refused as invalid.

        Records are checked first: a record the store would refuse must not hold up the others behind it.
        """
        valid = _checked(frames, check_record, "frame record")
        valid_parts = _checked(parts, check_part, "part verdict")
        refused = len(frames) - len(valid) + len(parts) - len(valid_parts)
        if not valid and not shadows and not valid_parts:
            return refused
        with self._lock:
            if not self._spool_files():
                try:
                    self._write(valid, list(shadows), valid_parts)
                    return refused
                except Exception as exc:  # noqa: BLE001 - any store failure: spool and let the drain thread retry
                    self._failed(exc)
            self._spill(valid, list(shadows), valid_parts)
        self._wake.set()
        return refused

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the drain thread (the spool stays for the next start) and close the store."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._store is not None:
            self._store.close()

    # --- the store ---------------------------------------------------------------------------------
    def _write(self, frames: list[FrameRecord], shadows: list[ShadowVerdict], parts: list[PartRecord]) -> None:
        if self._store is None:
            self._store = self._open_store()
        if frames:
            self._store.add_frames(frames)
            self.written += len(frames)
        if shadows:
            self._store.add_shadow_verdicts(shadows)
        if parts:
            self._store.add_parts(parts)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        log.warning("frame store unavailable (%s); frames go to the spool in %s", exc, self.spool_dir)
        if self._store is not None:
            self._store.close()
        self._store = None

    def _drain_forever(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while (spooled := self._spool_files()) and not self._stop.is_set():
                with self._lock:
                    try:
                        self._write(*_read_spool(spooled[0]))
                        spooled[0].unlink()
                        backoff = 0.5
                        continue
                    except Exception as exc:  # noqa: BLE001 - keep the spool file, retry later
                        self._failed(exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)

    # --- spool -----------------------------------------------------------------------------------
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("batch-*.json"))

    def _spill(self, frames: list[FrameRecord], shadows: list[ShadowVerdict], parts: list[PartRecord]) -> None:
        doc = {
            "frames": [_encode(asdict(f)) for f in frames],
            "shadows": [_encode(asdict(v)) for v in shadows],
            "parts": [_encode(asdict(p)) for p in parts],
        }
        # the frame count is in the name, so the backlog gauge never has to read a spooled file
        final = self.spool_dir / f"batch-{time.time_ns():020d}-{len(frames)}.json"
        atomic_write_json(final, doc, indent=None, sync_dir=True)


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


def _read_spool(path: Path) -> tuple[list[FrameRecord], list[ShadowVerdict], list[PartRecord]]:
    doc = json.loads(path.read_text())
    frames = [FrameRecord(**_decode(d)) for d in doc["frames"]]
    # shadow verdicts spooled before frames were keyed by line carry none: the line of their frame, if known
    lines = {(f.camera_id, f.frame_id): f.line_id for f in frames}
    shadows = [_decode(d) for d in doc.get("shadows", [])]
    parts = [_decode(d) for d in doc.get("parts", [])]  # batches spooled before parts were stored have none
    return (
        frames,
        [ShadowVerdict(**({"line_id": lines.get((d["camera_id"], d["frame_id"]), "")} | d)) for d in shadows],
        [PartRecord(**(d | {"views": tuple(d["views"]), "missing": tuple(d["missing"])})) for d in parts],
    )


def _checked(records: Sequence, check: Callable[[object], None], what: str) -> list:
    """The records ``check`` accepts; each refused one is logged with the reason."""
    valid = []
    for record in records:
        try:
            check(record)
            valid.append(record)
        except StoreError as exc:
            log.error("%s refused, not stored: %s", what, exc)
    return valid


def _spooled_count(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])
