"""The adapter's results log: one JSON line per settled frame, in capture order, fsynced; rotated by size or day.

A record holds the adapter's fields (frame and part id, ``seq``, capture time, ``outcome`` judged,
rejected or quarantined, HTTP ``status``) and the service's answer (verdict, probabilities, model
version, ``duplicate``; or ``error`` and ``detail``). Dropped frames never reached the service and have
no record: they are counted in the metrics and logged as errors.

Rotation: before a record would take the file past ``max_bytes``, or when the first record of a new
UTC day arrives (``daily``), the file is renamed to ``<stem>-<UTC time of rotation>Z<suffix>`` (for
``results.jsonl``: ``results-20261130T000000123456Z.jsonl``, so names sort by time) and a new one is
started; only the newest ``keep`` rotated files are kept. A frame id is written once even when the
service is asked again after a restart and answers ``"duplicate": true`` (the ids of the current file
and of the last ``remember`` records are known).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from inspectline.camera_adapters.source import Frame, Outcome
from inspectline.files import fsync_dir


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ResultsLog:
    """Append-only JSON lines for the line controller (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        daily: bool = False,
        keep: int = 30,
        remember: int = 100_000,
        now: Callable[[], datetime] = _utc_now,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.daily, self.keep, self.remember, self.now = max_bytes, daily, keep, remember, now
        self.logged: OrderedDict[str, None] = OrderedDict()
        torn = False
        if self.path.exists():
            text = self.path.read_text()
            torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                with contextlib.suppress(ValueError):  # a line torn by a crash: its frame is logged again
                    self._remember(json.loads(line)["frame_id"])
        self._fh: IO[str] = self.path.open("a")
        if torn:
            self._fh.write("\n")
        self._size = self.path.stat().st_size + (1 if torn else 0)
        self._day = (
            datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc).date() if self._size else self.now().date()
        )

    def append(self, frame: Frame, outcome: Outcome, line_id: str) -> bool:
        """Write the record unless this frame id was logged before; True when written."""
        if frame.frame_id in self.logged:
            return False
        settled_at = self.now()
        record = {
            "frame_id": frame.frame_id,
            "seq": frame.seq,
            "line_id": line_id,
            "camera_id": frame.camera_id,
            "part_id": frame.part_id,
            "captured_at": frame.captured_at.isoformat(),
            "outcome": outcome.kind,
            "status": outcome.status,
            "settled_at": settled_at.isoformat(),
        }
        record.update({k: v for k, v in outcome.body.items() if k not in record})
        line = json.dumps(record) + "\n"
        if self._due(len(line.encode()), settled_at):
            self.rotate()
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._size += len(line.encode())
        self._remember(frame.frame_id)
        return True

    def rotate(self) -> Path | None:
        """Start a new file now; returns the rotated file (None when there was nothing to rotate)."""
        if self._size == 0:
            self._day = self.now().date()
            return None
        self._fh.close()
        stamp = self.now()
        target = self.path.with_name(f"{self.path.stem}-{stamp:%Y%m%dT%H%M%S%f}Z{self.path.suffix}")
        os.replace(self.path, target)
        self._fh = self.path.open("a")
        fsync_dir(self.path.parent)
        self._size, self._day = 0, stamp.date()
        for old in self.rotated()[: -self.keep or None]:
            old.unlink(missing_ok=True)
        return target

    def rotated(self) -> list[Path]:
        """Rotated files, oldest first."""
        return sorted(self.path.parent.glob(f"{self.path.stem}-*Z{self.path.suffix}"))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _due(self, size: int, at: datetime) -> bool:
        too_big = self.max_bytes is not None and self._size > 0 and self._size + size > self.max_bytes
        return too_big or (self.daily and at.date() != self._day)

    def _remember(self, frame_id: str) -> None:
        self.logged[frame_id] = None
        while len(self.logged) > self.remember:
            self.logged.popitem(last=False)
