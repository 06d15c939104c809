"""Dataset replay: the frame rate, part ids, stable ids and resume, and injected shifts."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inspectline.camera_adapters.replay import ReplaySettings, ReplaySource, apply_shift
from inspectline.camera_adapters.source import Outcome, SourceState
from inspectline.config import DataConfig
from inspectline.imaging import decode_image


def replay(data: DataConfig, tmp_path, **changes) -> ReplaySource:
    return ReplaySource(ReplaySettings(data=data, **changes), "cam-r", SourceState(tmp_path / "state.json"))


@pytest.fixture
def folder_data(folder_dataset) -> DataConfig:
    return DataConfig(source="folder", path=folder_dataset)


def test_frames_come_at_the_requested_rate(folder_data, tmp_path):
    frames = list(replay(folder_data, tmp_path, fps=20, limit=11).frames(threading.Event()))
    assert len(frames) == 11
    span = (frames[-1].captured_at - frames[0].captured_at).total_seconds()
    assert span == pytest.approx(10 / 20, abs=0.1)  # ten intervals of 50 ms, on a fixed schedule
    gaps = np.diff([f.captured_at.timestamp() for f in frames])
    assert np.median(gaps) == pytest.approx(0.05, abs=0.01)


def test_frames_are_the_dataset_files_with_stable_ids_and_part_ids(folder_data, tmp_path):
    source = replay(folder_data, tmp_path, fps=1000, limit=3)
    frames = list(source.frames(threading.Event()))
    samples = source.samples[:3]
    assert [s.key for s in samples] == ["ok/ok_000.png", "ok/ok_001.png", "ok/ok_002.png"]
    assert [f.frame_id for f in frames] == ["ok_ok_000.png", "ok_ok_001.png", "ok_ok_002.png"]
    assert [f.image for f in frames] == [s.path.read_bytes() for s in samples]
    assert [f.part_id for f in frames] == [s.path.stem for s in samples]
    assert all(f.content_type == "image/png" and f.camera_id == "cam-r" for f in frames)


def test_manifest_groups_are_the_part_ids(manifest_dataset, tmp_path):
    frames = list(
        replay(DataConfig(source="manifest", path=manifest_dataset), tmp_path, fps=1000, limit=5).frames(
            threading.Event()
        )
    )
    assert [f.part_id for f in frames] == ["part00"] * 4 + ["part01"]
    assert frames[0].frame_id == "frames_part00_0.png"


def test_a_restart_resumes_after_the_last_settled_frame(folder_data, tmp_path):
    first = replay(folder_data, tmp_path, fps=1000, limit=5)
    frames = list(first.frames(threading.Event()))
    for frame in frames[:3]:  # two frames were still on their way when the adapter stopped
        first.settle(frame, Outcome("judged", 200))
    resumed = list(replay(folder_data, tmp_path, fps=1000, limit=4).frames(threading.Event()))
    assert [f.frame_id for f in resumed[:2]] == [
        f.frame_id for f in frames[3:]
    ]  # same ids: a resend is answered from memory
    assert resumed[0].image == frames[3].image


def test_the_next_cycle_has_new_ids_and_a_seeded_shuffle_is_stable(folder_data, tmp_path):
    source = replay(folder_data, tmp_path / "a", fps=1000, shuffle_seed=7)
    frames = list(source.frames(threading.Event()))
    assert len(frames) == 48 and len({f.frame_id for f in frames}) == 48
    for frame in frames:
        source.settle(frame, Outcome("judged", 200))
    again = list(replay(folder_data, tmp_path / "a", fps=1000, shuffle_seed=7, limit=3).frames(threading.Event()))
    assert [f.frame_id for f in again] != [f.frame_id for f in frames[:3]]
    assert all(f.frame_id.endswith(":1") for f in again)
    same_order = list(replay(folder_data, tmp_path / "b", fps=1000, shuffle_seed=7, limit=3).frames(threading.Event()))
    assert [f.frame_id for f in same_order] == [f.frame_id for f in frames[:3]]
    unshuffled = list(replay(folder_data, tmp_path / "c", fps=1000, limit=3).frames(threading.Event()))
    assert [f.frame_id for f in unshuffled] != [f.frame_id for f in frames[:3]]


def test_loop_goes_on_past_the_end(folder_data, tmp_path):
    frames = list(replay(folder_data, tmp_path, fps=1000, loop=True, limit=50).frames(threading.Event()))
    assert len(frames) == 50 and frames[48].frame_id == frames[0].frame_id + ":1"


@pytest.mark.parametrize("shift", ["brightness", "blur", "noise"])
def test_a_shift_starts_at_the_given_frame(folder_data, tmp_path, shift):
    source = replay(folder_data, tmp_path, fps=1000, limit=6, shift=shift, shift_from=3)
    frames = list(source.frames(threading.Event()))
    originals = [decode_image(s.path.read_bytes()).astype(np.float32) for s in source.samples[:6]]
    assert [f.image for f in frames[:3]] == [s.path.read_bytes() for s in source.samples[:3]]
    for frame, original in zip(frames[3:], originals[3:], strict=True):
        image = decode_image(frame.image).astype(np.float32)
        assert image.shape == original.shape
        if shift == "brightness":  # 40 % brighter by default
            assert image.mean() == pytest.approx(min(255, original.mean() * 1.4), rel=0.06)
        elif shift == "blur":
            assert cv2.Laplacian(image, cv2.CV_32F).var() < 0.5 * cv2.Laplacian(original, cv2.CV_32F).var()
        else:
            assert (image - original).std() == pytest.approx(0.08 * 255, rel=0.25)
    again = list(
        replay(folder_data, tmp_path / "again", fps=1000, limit=6, shift=shift, shift_from=3).frames(threading.Event())
    )
    assert [f.image for f in again] == [f.image for f in frames]  # a resent frame is the same image


def test_apply_shift_keeps_dtype_and_layout():
    rgb16 = np.random.default_rng(0).integers(0, 60000, (8, 9, 3)).astype(np.uint16)
    for shift, strength in [("brightness", -0.5), ("blur", 1.0), ("noise", 0.05)]:
        out = apply_shift(rgb16, shift, strength, seed=1)
        assert out.dtype == np.uint16 and out.shape == rgb16.shape
    assert np.array_equal(apply_shift(rgb16, "brightness", -0.5), (rgb16.astype(np.float32) * 0.5).astype(np.uint16))
    gray = np.full((4, 4), 200, np.uint8)
    assert apply_shift(gray, "brightness", 1.0).max() == 255  # clipped, not wrapped


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shift": "brightness", "shift_strength": -1.0}, "above -1"),
        ({"shift": "blur", "shift_strength": 0.0}, "must be positive"),
        ({"shift": "sparkle"}, "brightness"),
        ({"fps": 0}, "greater than 0"),
    ],
)
def test_settings_name_the_bad_value(changes, message):
    with pytest.raises(ValidationError, match=message):
        ReplaySettings(**changes)
