"""The one atomic-write helper: a reader sees the old file or the new one, never a mix or a leftover."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inspectline.files import atomic_write, atomic_write_json


def test_replaces_the_whole_file_and_leaves_no_temporary_files(tmp_path: Path):
    target = tmp_path / "sub" / "pointer.json"
    atomic_write_json(target, {"version": "v0001"})
    atomic_write_json(target, {"version": "v0002"}, sync_dir=True)
    assert json.loads(target.read_text()) == {"version": "v0002"}
    assert [p.name for p in target.parent.iterdir()] == ["pointer.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "model.pt"
    atomic_write(target, b"old weights")

    def broken(fh):
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_mode_and_temporary_folder(tmp_path: Path):
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "frames" / "000001.frame"
    atomic_write(target, b"x", mode=0o444, tmp_dir=tmp_path / "tmp")
    assert target.read_bytes() == b"x" and oct(os.stat(target).st_mode & 0o777) == "0o444"
    assert list((tmp_path / "tmp").iterdir()) == []
