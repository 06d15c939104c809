"""The disk spool: frames waiting for the service, one fsynced file each, delivered in capture order.

Layout under the spool folder::

    frames/000000000042.frame   one frame: a JSON header line, then the encoded image bytes
    tmp/                        frames being written; renamed into frames/ only once fsynced
    corrupt/                    files found unreadable at start (kept for a person, never sent)
    quarantine/                 frames the service kept failing on (5xx): the image as sent and
                                ``<name>.json`` with the frame's ids and the reason

A frame file is written to ``tmp/``, flushed, fsynced, renamed into ``frames/`` and the folder is
fsynced, so after a crash or power loss ``frames/`` holds only complete frames and a frame the adapter
reported as spooled is there. File names are the adapter's sequence numbers (zero-padded), so sorting
the names is capture order, across restarts too: the adapter numbers new frames after the highest
spooled one. A frame leaves the spool only after its outcome was recorded, so a crash at any point
re-sends it at worst, and its stable frame id makes the service answer that resend from memory.
"""

from __future__ import annotations

import bisect
import errno
import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

from inspectline.camera_adapters.source import CONTENT_TYPES, Frame
from inspectline.errors import ConfigError
from inspectline.files import atomic_write

log = logging.getLogger(__name__)

SUFFIX = ".frame"
_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT}


class Spool:
    """Frames on disk in sequence order, bounded by ``max_bytes`` (image bytes plus headers)."""

    def __init__(self, root: Path, *, max_bytes: int):
        if max_bytes < 1:
            msg = f"spool max_bytes must be positive, got {max_bytes}"
            raise ConfigError(msg)
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.frames_dir = self.root / "frames"
        self.tmp_dir = self.root / "tmp"
        try:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the spool folder {self.root}: {exc.strerror or exc}"
            raise ConfigError(msg) from None
        for leftover in self.tmp_dir.iterdir():  # torn writes from a crash: never reported as spooled
            leftover.unlink()
        self._seqs: list[int] = []
        self._sizes: dict[int, int] = {}
        self._ids: dict[str, int] = {}
        self._total = 0
        self._load()

    # --- queries -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, frame_id: object) -> bool:
        return frame_id in self._ids

    @property
    def total_bytes(self) -> int:
        return self._total

    def max_seq(self) -> int:
        """The highest sequence number spooled, -1 when empty."""
        return self._seqs[-1] if self._seqs else -1

    def head_seq(self) -> int | None:
        """The oldest spooled sequence number, None when empty."""
        return self._seqs[0] if self._seqs else None

    # --- changes -------------------------------------------------------------------------------
    def put(self, frame: Frame) -> bool:
        """Write ``frame`` durably; False when the spool (or the disk) is full."""
        if frame.seq < 0:
            msg = f"frame {frame.frame_id} has no sequence number; the adapter numbers frames before spooling them"
            raise ValueError(msg)
        if frame.frame_id in self._ids:
            return True
        data = _encode(frame)
        if self.total_bytes + len(data) > self.max_bytes:
            return False
        name = f"{frame.seq:012d}{SUFFIX}"
        try:
            atomic_write(self.frames_dir / name, data, sync_dir=True, tmp_dir=self.tmp_dir)
        except OSError as exc:
            if exc.errno in _FULL_ERRORS:
                return False
            raise
        bisect.insort(self._seqs, frame.seq)
        self._sizes[frame.seq] = len(data)
        self._ids[frame.frame_id] = frame.seq
        self._total += len(data)
        return True

    def head(self) -> Frame | None:
        """The oldest spooled frame (it stays spooled until :meth:`remove`)."""
        return self.get(self._seqs[0]) if self._seqs else None

    def seq_after(self, seq: int) -> int | None:
        """The lowest spooled sequence number above ``seq`` (frames up to ``seq`` are being delivered)."""
        index = bisect.bisect_right(self._seqs, seq)
        return self._seqs[index] if index < len(self._seqs) else None

    def get(self, seq: int) -> Frame:
        """The spooled frame numbered ``seq`` (it stays spooled until :meth:`remove`)."""
        return _decode((self.frames_dir / f"{seq:012d}{SUFFIX}").read_bytes())

    def quarantine(self, frame: Frame, reason: dict) -> Path:
        """Keep ``frame`` for a person in ``quarantine/`` with ``reason``; it stays spooled until :meth:`remove`."""
        folder = self.root / "quarantine"
        suffix = {v: k for k, v in CONTENT_TYPES.items()}.get(frame.content_type, ".bin")
        image = folder / f"{max(frame.seq, 0):012d}-{frame.frame_id}{suffix}"
        doc = {
            "frame_id": frame.frame_id,
            "camera_id": frame.camera_id,
            "part_id": frame.part_id,
            "captured_at": frame.captured_at.isoformat(),
            "seq": frame.seq,
            "origin": frame.origin,
            **reason,
        }
        atomic_write(image, frame.image)
        atomic_write(image.with_name(image.name + ".json"), json.dumps(doc, indent=2).encode(), sync_dir=True)
        return image

    def remove(self, frame: Frame) -> None:
        seq = self._ids.pop(frame.frame_id, None)
        if seq is None:
            return
        (self.frames_dir / f"{seq:012d}{SUFFIX}").unlink(missing_ok=True)
        self._seqs.remove(seq)
        self._total -= self._sizes.pop(seq)

    def _load(self) -> None:
        for path in sorted(self.frames_dir.glob(f"*{SUFFIX}")):
            try:
                seq = int(path.stem)
                frame = _decode(path.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                log.error("spool file %s is unreadable (%s); moved to %s/corrupt/ and not sent", path, exc, self.root)
                (self.root / "corrupt").mkdir(exist_ok=True)
                shutil.move(path, self.root / "corrupt" / path.name)
                continue
            self._seqs.append(seq)
            self._sizes[seq] = path.stat().st_size
            self._ids[frame.frame_id] = seq
            self._total += self._sizes[seq]
        if self._seqs:
            log.info(
                "spool %s holds %d frames from an earlier run; they are delivered first", self.root, len(self._seqs)
            )


def _encode(frame: Frame) -> bytes:
    header = {
        "frame_id": frame.frame_id,
        "camera_id": frame.camera_id,
        "captured_at": frame.captured_at.isoformat(),
        "content_type": frame.content_type,
        "part_id": frame.part_id,
        "origin": frame.origin,
        "seq": frame.seq,
        "image_bytes": len(frame.image),
    }
    return json.dumps(header).encode() + b"\n" + frame.image


def _decode(data: bytes) -> Frame:
    line, _, image = data.partition(b"\n")
    header = json.loads(line)
    if len(image) != header["image_bytes"]:
        msg = f"image is {len(image)} bytes, the header says {header['image_bytes']}"
        raise ValueError(msg)
    return Frame(
        frame_id=header["frame_id"],
        camera_id=header["camera_id"],
        captured_at=datetime.fromisoformat(header["captured_at"]),
        image=image,
        content_type=header["content_type"],
        part_id=header["part_id"],
        origin=header["origin"],
        seq=header["seq"],
    )
