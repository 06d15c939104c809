"""The hot-folder source: many line cameras write one image file per trigger into a folder.

A file is picked up only once it is completely written: its size and modification time must be
unchanged over ``stable_polls`` polls after it was first seen, it must be readable, and PNG, JPEG and
BMP files must also look complete (PNG ends with its IEND chunk, JPEG carries its end-of-image marker,
BMP is as long as its header says). A stable file that still looks cut short is waited on for
``incomplete_grace_s`` and then sent anyway, so the service's 422 puts it in ``failed/`` with the
reason instead of leaving it in the inbox forever. Names with other suffixes (``.part``, ``.tmp``) and
hidden files are ignored: cameras that write under a temporary name and rename at the end are safe by
construction.

After the service answered, the file moves to ``done/`` (a verdict) or ``failed/`` with
``NAME.reason.json`` (a final rejection, or quarantined after repeated 5xx: moving it back into the
inbox sends it again). Files stay in the inbox until then, so the inbox is the
durable queue: after a restart every file still there is taken again, except those already in the
adapter's spool. The frame id is the file name plus a hash of name, size and modification time: the
same file gets the same id after a restart (the service answers a resend from memory), a camera that
reuses a file name for a new image gets a new one. Capture time is the file's modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field, field_validator

from inspectline.camera_adapters.source import Frame, Outcome, Settings, content_type_for, safe_id
from inspectline.errors import ConfigError

log = logging.getLogger(__name__)


class FolderSettings(Settings):
    """A watched folder and how a file counts as completely written."""

    path: Path
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    stable_polls: int = Field(2, ge=1, description="polls with unchanged size and mtime before a file is taken")
    incomplete_grace_s: float = Field(
        30.0, ge=0, description="a stable file that looks cut short is sent after this long"
    )
    done_dir: Path | None = Field(None, description="default PATH/done")
    failed_dir: Path | None = Field(None, description="default PATH/failed")
    part_id_pattern: str | None = Field(
        None, description="regex on the file name whose group 'part' (or group 1) is the part id"
    )

    @field_validator("part_id_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            pattern = re.compile(value)
        except re.error as exc:
            msg = f"part_id_pattern {value!r} is not a valid regular expression: {exc}"
            raise ValueError(msg) from None
        if pattern.groups < 1:
            msg = f"part_id_pattern {value!r} needs a group for the part id, e.g. '^(?P<part>[A-Z0-9]+)_'"
            raise ValueError(msg)
        return value


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    polls: int
    first_seen: float


class FolderSource:
    """Yields each completely written image file once; settles it into ``done/`` or ``failed/``."""

    def __init__(self, settings: FolderSettings, camera_id: str):
        if not settings.path.is_dir():
            msg = f"hot folder {settings.path} does not exist or is not a folder"
            raise ConfigError(msg)
        self.settings = settings
        self.camera_id = camera_id
        self.done_dir = settings.done_dir or settings.path / "done"
        self.failed_dir = settings.failed_dir or settings.path / "failed"
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        self._part = re.compile(settings.part_id_pattern) if settings.part_id_pattern else None
        self._seen: dict[str, _Seen] = {}
        self._taken: set[str] = set()  # handed to the adapter, not settled yet: still in the inbox
        self._lock = threading.Lock()

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            for frame in self.poll():
                yield frame
                if stop.is_set():
                    return
            stop.wait(self.settings.poll_interval_s)

    def poll(self) -> list[Frame]:
        """One look at the inbox: the files that became complete since the last look, oldest first."""
        now = time.monotonic()
        ready: list[tuple[int, str, Frame]] = []
        present = set()
        for entry in os.scandir(self.settings.path):
            name = entry.name
            if name.startswith(".") or content_type_for(Path(name)) is None:
                continue
            with self._lock:
                if name in self._taken:
                    continue
            try:
                if not entry.is_file():
                    continue
                stat = entry.stat()
            except FileNotFoundError:  # moved away between listing and looking
                continue
            present.add(name)
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen[name] = _Seen(stat.st_size, stat.st_mtime_ns, 0, now if seen is None else seen.first_seen)
                continue
            seen.polls += 1
            if seen.polls < self.settings.stable_polls or stat.st_size == 0:
                continue
            frame = self._read(Path(entry.path), stat, now - seen.first_seen)
            if frame is not None:
                ready.append((stat.st_mtime_ns, name, frame))
        for name in set(self._seen) - present:
            del self._seen[name]
        ready.sort(key=lambda item: item[:2])
        with self._lock:
            self._taken.update(name for _, name, _ in ready)
        for _, name, _ in ready:
            del self._seen[name]
        return [frame for _, _, frame in ready]

    def settle(self, frame: Frame, outcome: Outcome) -> None:
        """Move the file to ``done/`` or ``failed/`` (with the reason); a dropped file stays for the next start."""
        if frame.origin is None:
            return
        path = Path(frame.origin)
        if outcome.kind == "dropped":
            log.error(
                "%s stays in %s: the spool was full; it is sent after the adapter restarts", path.name, path.parent
            )
            return
        target_dir = self.done_dir if outcome.kind == "judged" else self.failed_dir
        target = _free_name(target_dir / path.name, frame.frame_id)
        try:
            shutil.move(path, target)
        except FileNotFoundError:
            log.warning("%s was removed from the hot folder before it could be moved to %s", path, target_dir)
        if outcome.kind in ("rejected", "quarantined"):
            reason = {
                "frame_id": frame.frame_id,
                "status": outcome.status,
                "error": outcome.body.get("error"),
                "detail": outcome.body.get("detail"),
            }
            target.with_name(target.name + ".reason.json").write_text(json.dumps(reason, indent=2) + "\n")
        with self._lock:
            self._taken.discard(path.name)

    def _read(self, path: Path, stat: os.stat_result, waited_s: float) -> Frame | None:
        try:
            data = path.read_bytes()
            after = path.stat()
        except OSError as exc:  # not readable yet (permissions, a writer's lock): look again next poll
            log.debug("%s is not readable yet: %s", path, exc)
            return None
        if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns) or len(data) != stat.st_size:
            return None
        if not looks_complete(data, path.suffix) and waited_s < self.settings.incomplete_grace_s:
            return None
        digest = hashlib.sha1(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        return Frame(
            frame_id=safe_id(f"{path.stem[:53]}-{digest}"),
            camera_id=self.camera_id,
            captured_at=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=timezone.utc),
            image=data,
            content_type=content_type_for(path) or "application/octet-stream",
            part_id=self._part_id(path.name),
            origin=str(path),
        )

    def _part_id(self, name: str) -> str | None:
        match = self._part.search(name) if self._part else None
        if match is None:
            return None
        value = match.groupdict().get("part") or match.group(1)
        return safe_id(value) if value else None


def looks_complete(data: bytes, suffix: str) -> bool:
    """Whether an image file's bytes end the way a complete file of its format does (TIFF: unknown, True)."""
    suffix = suffix.lower()
    if suffix == ".png":
        return data.endswith(b"IEND\xaeB`\x82")
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" in data[-64:]  # some cameras pad after the end-of-image marker
    if suffix == ".bmp":
        return len(data) >= 6 and int.from_bytes(data[2:6], "little") <= len(data)
    return True


def _free_name(target: Path, frame_id: str) -> Path:
    """``target``, or a name with the frame id added when a file of that name was settled before."""
    if not target.exists():
        return target
    return target.with_name(f"{target.stem}.{frame_id}{target.suffix}")
