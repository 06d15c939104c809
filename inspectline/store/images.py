"""Image bytes of stored frames, one file per content hash, on any fsspec storage.

    data/images/3f/3fa9...c2.png        a local folder (the default), or file://...
    s3://bucket/prefix/3f/3fa9...c2.png object storage (needs s3fs), memory://... in tests

A file's name is the sha256 of its bytes, so identical frames share one file and a file never changes
once written. Writes are atomic: on a local disk the bytes go to a hidden temporary name in the same
folder, are flushed to disk and renamed into place (``os.replace``), so a reader sees the whole file or
none; on object stores a single ``put`` is already all-or-nothing. Files are written before the database
rows that name them (see ``frames.py``), so a row never points at a partial file.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from inspectline.errors import StoreError
from inspectline.files import atomic_write


class ImageStore:
    """Content-addressed image files under ``storage_url``."""

    def __init__(self, storage_url: str) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(storage_url)
        except (ImportError, ValueError) as exc:
            msg = (
                f"storage_url {storage_url!r} cannot be opened ({exc}); use a folder, file://, "
                "memory:// or s3://bucket/prefix (needs s3fs)"
            )
            raise StoreError(msg) from None
        self.url = storage_url
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, sha256: str, fmt: str) -> str:
        """Where the image lives: two levels of fan-out keep folders small on local disks."""
        return f"{self.root}/{sha256[:2]}/{sha256}.{fmt}"

    def write(self, sha256: str, fmt: str, data: bytes) -> None:
        """Store ``data`` under its hash, atomically; StoreError if the storage refuses."""
        path = self.path(sha256, fmt)
        try:
            if self.is_local:
                _write_local(Path(path), data)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            msg = f"cannot write image {sha256[:12]} to {self.url}: {exc}"
            raise StoreError(msg) from exc

    def read(self, sha256: str, fmt: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(sha256, fmt))
        except (OSError, KeyError) as exc:  # memory:// raises FileNotFoundError, some backends KeyError
            msg = f"image {sha256[:12]} is recorded in the frame store but cannot be read from {self.url}: {exc}"
            raise StoreError(msg) from exc

    def delete(self, sha256: str, fmt: str) -> bool:
        """Remove the file; False if it was already gone. Other storage errors propagate."""
        try:
            self.fs.rm_file(self.path(sha256, fmt))
        except FileNotFoundError:
            return False
        return True

    def local_file(self, sha256: str, fmt: str, cache_dir: Path) -> Path:
        """A local path with the image's bytes: the stored file itself, or a copy cached in ``cache_dir``.

        Cached copies are named by hash, so one that exists is always right and is reused.
        """
        if self.is_local:
            path = Path(self.path(sha256, fmt))
            if not path.is_file():
                msg = (
                    f"image {sha256[:12]} is missing from {self.url}; was it removed by clean-up after "
                    "the frame was read?"
                )
                raise StoreError(msg)
            return path
        target = Path(cache_dir) / f"{sha256}.{fmt}"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _write_local(target, self.read(sha256, fmt), sync=False)
            except OSError as exc:
                msg = f"cannot cache image {sha256[:12]} in {cache_dir}: {exc}"
                raise StoreError(msg) from exc
        return target


def _write_local(final: Path, data: bytes, *, sync: bool = True) -> None:
    """Write once (content-addressed: read-only afterwards); with ``sync`` the rename itself reaches the
    disk before the row that points at the file is committed."""
    atomic_write(final, data, sync=sync, sync_dir=sync, mode=0o444)
