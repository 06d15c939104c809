"""A durable, append-only queue of records on local disk: the gateway's outbox survives a killed replica.

Every frame the gateway answers becomes an observation for the line monitor (metrics, drift, the frame
store). Between the answer and the monitor's acknowledgement the observation must not live only in the
gateway's memory: a replica that is killed, or restarted with its backlog, would lose accepted frames.
So each observation is appended here *before* the answer goes out, and forgotten only when the monitor
has acknowledged it (the monitor acknowledges once the frame is in the store or in the store's own
spool).

Layout of one journal (a folder per gateway replica)::

    <dir>/LOCK              flock'ed while the owning process lives
    <dir>/00000001.seg      records: [8-byte big-endian length][pickle of one record] ...
    <dir>/00000001.acked    how many bytes of 00000001.seg are acknowledged (atomically replaced)

A record is on disk once :meth:`Journal.append` returns (the write reached the kernel: it survives the
process; :meth:`sync` — called on every flush cycle — makes it survive a power cut too). Segments roll
over at ``segment_bytes`` and are deleted once fully acknowledged. A journal whose owner died (its LOCK
is free) is adopted by the next gateway replica that starts: see :func:`adopt_orphans`.

Records are pickled, and unpickled only into the classes in ``_ALLOWED`` (our frozen record types,
datetimes and builtins): a journal file is not a way to run code.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspectline.files import atomic_write, fsync_dir

log = logging.getLogger("ray.serve")
_HEADER = struct.Struct(">Q")
_ALLOWED = {
    ("inspectline.serving.records", name)
    for name in ("FrameMeta", "Judgement", "FrameObservation", "ErrorObservation", "ShadowObservation")
} | {("datetime", "datetime"), ("datetime", "timezone"), ("datetime", "timedelta"), ("builtins", "frozenset")}


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            msg = f"journal record refers to {module}.{name}, which is not a record type"
            raise pickle.UnpicklingError(msg)
        return super().find_class(module, name)


@dataclass(frozen=True, order=True)
class Position:
    """Where a record ends: (segment number, byte offset just after it)."""

    segment: int
    offset: int


class Journal:
    """One owner's append-only record queue; see the module docstring."""

    def __init__(self, root: Path, *, segment_bytes: int = 64 * 2**20):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            msg = f"journal {self.root} is in use by another process"
            raise RuntimeError(msg) from None
        segments = self._segments()
        self._segment = segments[-1] + 1 if segments else 1
        self._fd = self._open_segment(self._segment)
        self._offset = 0

    # --- writing ---------------------------------------------------------------------------------
    def append(self, record: Any) -> Position:
        """Write one record; returns the position just after it (what :meth:`ack` takes)."""
        payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        if self._offset and self._offset + len(payload) > self.segment_bytes:
            self._roll()
        os.write(self._fd, _HEADER.pack(len(payload)) + payload)
        self._offset += _HEADER.size + len(payload)
        return Position(self._segment, self._offset)

    def sync(self) -> None:
        """Make every appended record survive a power cut."""
        os.fsync(self._fd)

    def ack(self, upto: Position) -> None:
        """Every record up to and including the one ending at ``upto`` was delivered."""
        for segment in self._segments():
            if segment < upto.segment:
                self._drop(segment)
        if upto.segment == self._segment and upto.offset == self._offset:
            self._roll()  # everything delivered: start afresh, delete the old segment
            self._drop(upto.segment)
        else:
            atomic_write(self._acked_path(upto.segment), str(upto.offset).encode(), sync=False)

    # --- reading ---------------------------------------------------------------------------------
    def unacked(self, after: Position | None = None) -> Iterator[tuple[Position, Any]]:
        """Records not yet acknowledged, oldest first (from ``after`` on, when given)."""
        for segment in self._segments():
            if after is not None and segment < after.segment:
                continue
            start = max(self._acked_offset(segment), after.offset if after and segment == after.segment else 0)
            yield from self._read(segment, start)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)
        os.close(self._lock_fd)

    # --- internals ---------------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.root.glob("*.seg") if p.stem.isdigit())

    def _path(self, segment: int) -> Path:
        return self.root / f"{segment:08d}.seg"

    def _acked_path(self, segment: int) -> Path:
        return self.root / f"{segment:08d}.acked"

    def _acked_offset(self, segment: int) -> int:
        try:
            return int(self._acked_path(segment).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _open_segment(self, segment: int) -> int:
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fsync_dir(self.root)
        return fd

    def _roll(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._segment += 1
        self._fd = self._open_segment(self._segment)
        self._offset = 0

    def _drop(self, segment: int) -> None:
        if segment == self._segment:
            return
        self._path(segment).unlink(missing_ok=True)
        self._acked_path(segment).unlink(missing_ok=True)

    def _read(self, segment: int, start: int) -> Iterator[tuple[Position, Any]]:
        try:
            data = self._path(segment).read_bytes()
        except FileNotFoundError:
            return
        offset = start
        while offset + _HEADER.size <= len(data):
            (length,) = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data):  # torn last write of a killed process: never acknowledged, never answered
                log.warning("journal %s: ignoring a torn record at byte %d", self._path(segment), offset)
                return
            try:
                record = _RecordUnpickler(io.BytesIO(data[offset + _HEADER.size : end])).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
                log.error("journal %s: unreadable record at byte %d skipped: %s", self._path(segment), offset, exc)
            else:
                yield Position(segment, end), record
            offset = end


def adopt_orphans(parent: Path, own: Journal) -> int:
    """Move the unacknowledged records of journals whose owners died into ``own``; returns how many.

    Each sibling folder of ``own`` under ``parent`` whose LOCK can be taken belongs to a dead process.
    """
    moved = 0
    for folder in sorted(p for p in Path(parent).iterdir() if p.is_dir() and p != own.root):
        try:
            orphan = Journal(folder)
        except RuntimeError:
            continue  # its owner is alive
        last = None
        for position, record in orphan.unacked():
            own.append(record)
            last, moved = position, moved + 1
        own.sync()
        orphan.close()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        if last is not None:
            log.warning("adopted %d unacknowledged records from %s", moved, folder)
    return moved
