"""The OpenCV source on a video file this test writes with cv2.VideoWriter: file playback, pacing,
resume, and the live-stream behaviour (rate limit, reconnect with backoff) on the same file."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectline.camera_adapters.source import Outcome, Pace, SourceState
from inspectline.camera_adapters.video import VideoSettings, VideoSource, is_stream
from inspectline.errors import ConfigError
from inspectline.imaging import decode_image

FPS = 20.0


def write_video(path: Path, n: int, fps: float = FPS) -> Path:
    """``n`` frames of 48x40 whose brightness encodes the frame index (10 per step, wrapping after 25)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (48, 40))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((40, 48, 3), (i % 25) * 10, np.uint8))
    writer.release()
    return path


def open_source(tmp_path: Path, source: Path | str, **changes) -> VideoSource:
    return VideoSource(VideoSettings(source=str(source), **changes), "cam-v", SourceState(tmp_path / "state.json"))


def index_of(frame) -> int:
    return round(decode_image(frame.image).mean() / 10)


def test_a_file_plays_every_frame_in_order_at_its_own_rate(tmp_path):
    video = write_video(tmp_path / "line 3.avi", 12)
    frames = list(open_source(tmp_path, video).frames(threading.Event()))
    assert [f.frame_id for f in frames] == [f"line_3-{i:07d}" for i in range(12)]
    assert [index_of(f) for f in frames] == list(range(12))
    assert decode_image(frames[0].image).shape == (40, 48, 3) and frames[0].content_type == "image/png"
    span = (frames[-1].captured_at - frames[0].captured_at).total_seconds()
    assert span == pytest.approx(11 / FPS, abs=0.1)


def test_fps_overrides_the_file_rate_and_max_frames_stops_early(tmp_path):
    video = write_video(tmp_path / "clip.avi", 12)
    frames = list(open_source(tmp_path, video, fps=50, max_frames=6, encoding="jpeg").frames(threading.Event()))
    assert len(frames) == 6 and frames[0].content_type == "image/jpeg"
    span = (frames[-1].captured_at - frames[0].captured_at).total_seconds()
    assert 0.09 <= span < 0.2  # five intervals at 50 fps; the file's own 20 fps would take 0.25 s


def test_the_pace_starts_at_the_first_frame_not_when_the_source_opened():
    pace = Pace(50)
    time.sleep(0.3)  # a source slow to give its first frame: OpenCV opening a file under load, a network share
    stop, slots = threading.Event(), []
    for _ in range(6):
        assert pace.wait(stop)
        slots.append(time.monotonic())
    assert slots[-1] - slots[0] >= 0.09  # five intervals at 50 fps, not six frames at once to catch up


def test_a_frame_is_stamped_when_it_was_taken_not_after_its_encoding(tmp_path, monkeypatch):
    encode, calls = cv2.imencode, []

    def slow_first(ext, image):
        calls.append(ext)
        if len(calls) == 1:
            time.sleep(0.06)  # the first JPEG encode, slow on a loaded machine
        return encode(ext, image)

    monkeypatch.setattr("inspectline.camera_adapters.video.cv2.imencode", slow_first)
    video = write_video(tmp_path / "clip.avi", 12)
    frames = list(open_source(tmp_path, video, fps=50, max_frames=6, encoding="jpeg").frames(threading.Event()))
    span = (frames[-1].captured_at - frames[0].captured_at).total_seconds()
    assert 0.09 <= span < 0.2  # the slots five intervals apart, whatever the encoding cost


def test_a_restarted_file_source_resumes_after_the_last_settled_frame(tmp_path):
    video = write_video(tmp_path / "clip.avi", 10)
    first = open_source(tmp_path, video, fps=1000)
    frames = list(first.frames(threading.Event()))
    for frame in frames[:5]:
        first.settle(frame, Outcome("judged", 200))
    resumed = list(open_source(tmp_path, video, fps=1000).frames(threading.Event()))
    assert [f.frame_id for f in resumed] == [f.frame_id for f in frames[5:]]
    assert [index_of(f) for f in resumed] == [5, 6, 7, 8, 9]


def test_a_dropped_stream_reconnects_and_ids_stay_unique(tmp_path):
    video = write_video(tmp_path / "clip.avi", 5)
    source = open_source(tmp_path, video, live=True, max_frames=12, reconnect_initial_s=0.01)
    frames = list(source.frames(threading.Event()))
    assert len(frames) == 12 and source.reconnects >= 2  # the "stream" ends every five frames
    assert len({f.frame_id for f in frames}) == 12
    assert all(re.fullmatch(r"\d{8}T\d{12}-\d{6}", f.frame_id) for f in frames)
    assert [int(f.frame_id[-6:]) for f in frames] == list(range(12))
    later = list(open_source(tmp_path, video, live=True, max_frames=2).frames(threading.Event()))
    assert [int(f.frame_id[-6:]) for f in later] == [12, 13]  # the sequence survives a restart


def test_a_stream_that_is_not_there_yet_is_retried_with_backoff(tmp_path):
    target = tmp_path / "late.avi"
    source = open_source(tmp_path, target, live=True, max_frames=3, reconnect_initial_s=0.05, reconnect_max_s=0.2)
    taken = []
    worker = threading.Thread(target=lambda: taken.extend(source.frames(threading.Event())))
    worker.start()
    time.sleep(0.5)
    assert taken == [] and source.reconnects >= 2
    write_video(tmp_path / "writing.avi", 5).rename(target)  # the camera comes online
    worker.join(timeout=10)
    assert len(taken) == 3


def test_a_live_source_never_takes_more_than_fps(tmp_path):
    video = write_video(tmp_path / "fast.avi", 200)
    frames = list(
        open_source(tmp_path, video, live=True, fps=10, max_frames=4, reconnect_initial_s=0.01).frames(
            threading.Event()
        )
    )
    gaps = np.diff([f.captured_at.timestamp() for f in frames])
    assert len(frames) == 4 and gaps.min() >= 0.095
    assert [index_of(f) for f in frames] != [0, 1, 2, 3]  # frames in between were read and passed over


def test_stop_ends_a_live_source(tmp_path):
    stop = threading.Event()
    source = open_source(tmp_path, tmp_path / "never.avi", live=True, reconnect_initial_s=5)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert list(source.frames(stop)) == []
    assert time.monotonic() - started < 2


def test_errors_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.avi does not exist"):
        open_source(tmp_path, tmp_path / "missing.avi")
    (tmp_path / "notes.avi").write_text("not a video")
    with pytest.raises(ConfigError, match=r"cannot open the video file .*notes.avi"):
        list(open_source(tmp_path, tmp_path / "notes.avi").frames(threading.Event()))


def test_streams_and_devices_are_live():
    assert is_stream("rtsp://10.0.0.7/stream1") and is_stream("HTTP://cam/mjpeg") and is_stream("0")
    assert not is_stream("/data/line3.mp4") and not is_stream("clip.avi")
