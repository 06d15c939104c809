"""Image files: one per content hash, written atomically before any row names them, on local and fsspec storage."""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec
import pytest

from inspectline import files as files_module
from inspectline.errors import FrameNotFoundError, StoreError
from tests.unit.store.factories import files_under, png, record


def test_identical_bytes_are_stored_once_and_read_back(store, tmp_path):
    store.add_frames([record("f1", shade=10), record("f2", shade=10, verdict="UNSURE"), record("f3", shade=20)])
    f1, f2, f3 = (store.find("line-a", "cam1", name) for name in ("f1", "f2", "f3"))

    assert f1.image_sha256 == f2.image_sha256 == hashlib.sha256(png(10)).hexdigest() != f3.image_sha256
    stored = files_under(tmp_path / "images")
    assert [p.name for p in stored] == sorted(f"{f.image_sha256}.png" for f in (f1, f3))
    assert store.image(f2.id) == (png(10), "png")
    assert store.image(f3.id) == (png(20), "png")


def test_a_resent_frame_writes_no_second_file(store, tmp_path):
    store.add_frames([record("f1", shade=3)])
    before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path / "images")}
    assert store.add_frames([record("f1", shade=4)]) == 0  # repeated pair: the first row and image stay
    assert {p: p.stat().st_mtime_ns for p in files_under(tmp_path / "images")} == before
    assert store.image(store.find("line-a", "cam1", "f1").id)[0] == png(3)


def test_an_image_appears_under_its_name_only_once_complete(store, tmp_path, monkeypatch):
    visible_while_flushing = []
    real_fsync = os.fsync

    def spy(fd):
        visible_while_flushing.append([p.name for p in files_under(tmp_path / "images")])
        return real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", spy)
    store.add_frames([record("f1", shade=9)])
    final = f"{hashlib.sha256(png(9)).hexdigest()}.png"
    (while_writing, *_) = visible_while_flushing
    assert while_writing and all(name.startswith(".") and name.endswith(".tmp") for name in while_writing)
    assert [p.name for p in files_under(tmp_path / "images")] == [final]


@pytest.mark.parametrize("failing_call", ["fsync", "replace"])
def test_a_failed_image_write_leaves_no_row_and_no_partial_or_temporary_file(
    store, tmp_path, monkeypatch, failing_call
):
    real = getattr(os, failing_call)
    calls = {"n": 0}

    def fail_on_second_image(*args):
        # The first image of the batch is written completely; the disk "fills up" during the second.
        calls["n"] += 1
        if calls["n"] > (2 if failing_call == "fsync" else 1):  # fsync runs twice per image: file, then folder
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(files_module.os, failing_call, fail_on_second_image)
    with pytest.raises(StoreError, match="No space left"):
        store.add_frames([record("f1", shade=1), record("f2", shade=2)])
    monkeypatch.undo()

    assert store.count() == 0  # the transaction rolled back: no row names any file
    left = files_under(tmp_path / "images")
    assert [p.name for p in left] == [
        f"{hashlib.sha256(png(1)).hexdigest()}.png"
    ]  # complete, unreferenced, no temp file
    assert left[0].read_bytes() == png(1)

    assert store.add_frames([record("f1", shade=1), record("f2", shade=2)]) == 2  # a retry adopts the orphan
    assert [store.image(store.find("line-a", "cam1", n).id)[0] for n in ("f1", "f2")] == [png(1), png(2)]
    assert not [p for p in files_under(tmp_path / "images") if p.name.startswith(".")]


def test_images_that_were_not_kept_or_frames_that_do_not_exist_are_distinct_errors(make_store):
    store = make_store(keep_ok_images=0.0)
    store.add_frames([record("f1", verdict="OK", p=0.1), record("f2", shade=None, image_format=None)])
    for frame in (store.find("line-a", "cam1", "f1"), store.find("line-a", "cam1", "f2")):
        assert frame.image_sha256 is None
        with pytest.raises(StoreError, match="no stored image") as caught:
            store.image(frame.id)
        assert not isinstance(caught.value, FrameNotFoundError)
    with pytest.raises(FrameNotFoundError):
        store.image(9999)


def test_the_image_format_is_sniffed_when_not_given(store):
    store.add_frames(
        [record("f1", image_format=None), record("f2", image_format="JPG", image=b"\xff\xd8\xff\xe0" + b"0" * 20)]
    )
    assert store.find("line-a", "cam1", "f1").image_format == "png"
    assert store.find("line-a", "cam1", "f2").image_format == "jpeg"


def test_local_image_path_is_the_stored_file_on_local_storage(store, tmp_path):
    store.add_frames([record("f1", shade=5)])
    path = store.local_image_path(store.find("line-a", "cam1", "f1"), tmp_path / "cache")
    assert path.is_relative_to(tmp_path / "images") and path.read_bytes() == png(5)
    assert not (tmp_path / "cache").exists()


def test_memory_storage_works_like_any_fsspec_object_store(make_store, tmp_path):
    bucket = f"memory://inspect-test-{uuid.uuid4().hex[:8]}/frames"
    store = make_store(storage_url=bucket, max_age_days=30)
    store.add_frames([record("f1", shade=7), record("f2", shade=7), record("f3", shade=8)])
    fs = fsspec.filesystem("memory")
    root = bucket.removeprefix("memory:/")
    assert len(fs.find(root)) == 2
    f1 = store.find("line-a", "cam1", "f1")
    assert store.image(f1.id) == (png(7), "png")

    cached = store.local_image_path(f1, tmp_path / "cache")
    assert cached.parent == tmp_path / "cache" and cached.read_bytes() == png(7)
    assert store.local_image_path(f1, tmp_path / "cache") == cached  # reused, not fetched again

    report = store.cleanup(now=record("x").received_at.replace(year=2026))
    assert (report.images_deleted, report.frames_cleared) == (2, 3)
    assert fs.find(root) == []
