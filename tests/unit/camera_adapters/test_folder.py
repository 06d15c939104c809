"""The hot folder: files are taken once completely written, settled into done/ or failed/, and a
restart neither re-sends nor skips a file."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inspectline.camera_adapters.folder import FolderSettings, FolderSource, looks_complete
from inspectline.camera_adapters.runner import AdapterSettings, run_camera
from inspectline.camera_adapters.source import Outcome
from inspectline.camera_adapters.uploader import UploadSettings
from inspectline.errors import ConfigError
from inspectline.imaging import decode_image, encode_png
from tests.helpers import make_cell
from tests.unit.camera_adapters.fakes import FakeService


def png(seed: int = 0) -> bytes:
    return encode_png(make_cell(np.random.default_rng(seed), seed % 2 == 1))


def source(inbox: Path, **changes) -> FolderSource:
    return FolderSource(FolderSettings(path=inbox, poll_interval_s=0.02, **changes), "cam-1")


def polls(folder: FolderSource, n: int) -> list:
    taken = []
    for _ in range(n):
        taken += folder.poll()
    return taken


def wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_file_being_written_is_taken_only_once_complete_and_stable(tmp_path):
    data = png()
    folder = source(tmp_path, stable_polls=2)
    target = tmp_path / "cell.png"
    with target.open("wb") as fh:
        fh.write(data[:100])
        fh.flush()
        assert folder.poll() == []  # first sight
        assert folder.poll() == []  # unchanged once, but not yet for two polls (and cut short)
        fh.write(data[100:])
    assert folder.poll() == []  # grew: the count starts again
    assert folder.poll() == []
    [frame] = folder.poll()
    assert frame.image == data and decode_image(frame.image).shape == (40, 40)
    assert polls(folder, 3) == []  # taken once


def test_a_stable_file_that_is_cut_short_waits_for_the_grace_period(tmp_path):
    data = png()
    (tmp_path / "cut.png").write_bytes(data[:-20])
    folder = source(tmp_path, stable_polls=1, incomplete_grace_s=0.4)
    assert polls(folder, 4) == []
    time.sleep(0.45)
    [frame] = folder.poll()  # sent anyway: the service's 422 will put it in failed/ with the reason
    assert frame.image == data[:-20]


def test_temporary_hidden_and_foreign_files_are_ignored_until_renamed(tmp_path):
    (tmp_path / "cell.png.part").write_bytes(png(1))
    (tmp_path / ".cell.png").write_bytes(png(2))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = source(tmp_path, stable_polls=1)
    assert polls(folder, 3) == []
    os.rename(tmp_path / "cell.png.part", tmp_path / "cell.png")
    taken = polls(folder, 3)
    assert [Path(f.origin).name for f in taken] == ["cell.png"]


def test_files_are_taken_oldest_first_with_their_mtime_as_capture_time(tmp_path):
    now = time.time()
    for name, age in [("a.png", 5), ("b.png", 30), ("c.png", 10)]:
        (tmp_path / name).write_bytes(png())
        os.utime(tmp_path / name, (now - age, now - age))
    taken = polls(source(tmp_path, stable_polls=1), 2)
    assert [Path(f.origin).name for f in taken] == ["b.png", "c.png", "a.png"]
    assert taken[0].captured_at.timestamp() == pytest.approx(now - 30, abs=1e-3)
    assert all(f.content_type == "image/png" and f.camera_id == "cam-1" for f in taken)


def test_complete_looking_formats():
    data = png()
    assert looks_complete(data, ".png") and not looks_complete(data[:-1], ".PNG")
    jpeg = b"\xff\xd8" + b"x" * 100 + b"\xff\xd9"
    assert (
        looks_complete(jpeg, ".jpg")
        and looks_complete(jpeg + b"\0\0", ".jpeg")
        and not looks_complete(jpeg[:-2], ".jpg")
    )
    bmp = b"BM" + (60).to_bytes(4, "little") + b"\0" * 54
    assert looks_complete(bmp, ".bmp") and not looks_complete(bmp[:40], ".bmp")
    assert looks_complete(b"II*\0", ".tiff")


def test_frame_ids_are_stable_across_restarts_and_new_for_a_reused_name(tmp_path):
    (tmp_path / "cell 7 (top).png").write_bytes(png(1))
    [first] = polls(source(tmp_path, stable_polls=1), 2)
    [again] = polls(source(tmp_path, stable_polls=1), 2)  # a restarted adapter
    assert first.frame_id == again.frame_id and first.frame_id.startswith("cell_7__top")
    (tmp_path / "cell 7 (top).png").write_bytes(png(3))  # the camera reuses the name for the next part
    os.utime(tmp_path / "cell 7 (top).png", (time.time() + 5, time.time() + 5))
    [replaced] = polls(source(tmp_path, stable_polls=1), 2)
    assert replaced.frame_id != first.frame_id


def test_part_ids_from_the_file_name(tmp_path):
    (tmp_path / "P-0042_cam1.png").write_bytes(png())
    (tmp_path / "noise.png").write_bytes(png())
    taken = polls(source(tmp_path, stable_polls=1, part_id_pattern=r"^(?P<part>P-\d+)_"), 2)
    assert {Path(f.origin).name: f.part_id for f in taken} == {"P-0042_cam1.png": "P-0042", "noise.png": None}
    with pytest.raises(ValueError, match="needs a group"):
        FolderSettings(path=tmp_path, part_id_pattern=r"P-\d+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        FolderSettings(path=tmp_path, part_id_pattern=r"(P-")


def test_settle_moves_files_to_done_or_failed_with_the_reason(tmp_path):
    for name in ("good.png", "bad.png", "again.png"):
        (tmp_path / name).write_bytes(png())
    folder = source(tmp_path, stable_polls=1)
    frames = {Path(f.origin).name: f for f in polls(folder, 2)}
    (tmp_path / "done").joinpath("again.png").write_bytes(b"an earlier part with the same name")
    folder.settle(frames["good.png"], Outcome("judged", 200, {"verdict": "OK"}))
    folder.settle(frames["again.png"], Outcome("judged", 200, {"verdict": "OK"}))
    folder.settle(
        frames["bad.png"], Outcome("rejected", 422, {"error": "undecodable_image", "detail": "truncated PNG"})
    )
    assert (tmp_path / "done" / "good.png").read_bytes() == png()
    assert (tmp_path / "done" / f"again.{frames['again.png'].frame_id}.png").read_bytes() == png()
    reason = json.loads((tmp_path / "failed" / "bad.png.reason.json").read_text())
    assert reason == {
        "frame_id": frames["bad.png"].frame_id,
        "status": 422,
        "error": "undecodable_image",
        "detail": "truncated PNG",
    }
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []


def test_a_restart_neither_resends_nor_skips_a_file(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(6):
        (inbox / f"part{i:02d}.png").write_bytes(png(i))
    service = FakeService()
    adapter = AdapterSettings(
        upload=UploadSettings(url="http://svc"), spool_dir=tmp_path / "spool", results_log=tmp_path / "results.jsonl"
    )
    settings = FolderSettings(path=inbox, poll_interval_s=0.02, stable_polls=1)

    def run_until(judged: int) -> None:
        stop = threading.Event()
        worker = threading.Thread(
            target=run_camera, args=(settings, adapter), kwargs={"stop": stop, "transport": service.transport()}
        )
        worker.start()
        try:
            wait_until(lambda: sum(service.judged.values()) >= judged)
        finally:
            stop.set()
            worker.join()

    run_until(3)
    for i in range(6, 9):  # the camera goes on writing while the adapter is down
        (inbox / f"part{i:02d}.png").write_bytes(png(i))
    run_until(9)
    wait_until(lambda: len(list((inbox / "done").iterdir())) == 9)

    assert len(service.requests) == 9 and set(service.judged.values()) == {1}  # nothing sent twice
    assert sorted(p.name for p in (inbox / "done").iterdir()) == [f"part{i:02d}.png" for i in range(9)]
    assert [p.name for p in inbox.iterdir() if p.is_file()] == []
    logged = [json.loads(line)["frame_id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(logged) == sorted(service.judged) and len(logged) == 9


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSource(FolderSettings(path=tmp_path / "nope"), "cam-1")
