"""Writing files so that a reader, or a crash, never sees half of one: the one atomic-write helper.

Every file other processes read while it may be rewritten — model checkpoints, registry pointers and
manifests, stored images, spooled frames, adapter state — goes through :func:`atomic_write`: the bytes
go to a temporary file in the same folder (same file system, so the rename is atomic), are flushed
and fsynced, then renamed over the target; with ``sync_dir`` the folder is fsynced as well, so the
rename itself survives a power cut before anything that depends on the file is committed.

    atomic_write(path, data)                      # bytes
    atomic_write_json(path, {"version": "v0003"})
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: Path,
    data: bytes | Callable[[IO[bytes]], None],
    *,
    sync: bool = True,
    sync_dir: bool = False,
    mode: int | None = None,
    tmp_dir: Path | None = None,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to the open file) atomically.

    ``mode`` sets the file's permission bits before the rename (e.g. ``0o444`` for write-once files);
    ``tmp_dir`` holds the temporary file when not the target's folder (it must be on the same file
    system), for writers that clear torn temporary files at start.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, doc: Any, *, indent: int | None = 2, sync_dir: bool = False) -> None:
    """:func:`atomic_write` of a JSON document."""
    atomic_write(path, json.dumps(doc, indent=indent, default=str).encode(), sync_dir=sync_dir)


def fsync_dir(folder: Path) -> None:
    """Make renames and deletions in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
