"""The results log rotates by size and by day, keeps a bounded number of old files, and loses no record."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from inspectline.camera_adapters.results_log import ResultsLog
from inspectline.camera_adapters.source import Outcome
from tests.unit.camera_adapters.fakes import make_frames

JUDGED = Outcome("judged", 200, {"verdict": "OK", "defect_probability": 0.1})


class Clock:
    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        self.t += timedelta(milliseconds=1)
        return self.t


def records(paths) -> list[str]:
    return [json.loads(line)["frame_id"] for path in paths for line in path.read_text().splitlines()]


def test_rotates_by_size_and_keeps_every_record_in_order(tmp_path):
    path = tmp_path / "results.jsonl"
    frames = make_frames(30)
    with ResultsLog(path, max_bytes=4096, keep=100, now=Clock(datetime(2026, 11, 30, 8, tzinfo=timezone.utc))) as log:
        for frame in frames:
            log.append(frame, JUDGED, "line-1")
        rotated = log.rotated()
    assert len(rotated) >= 2 and all(p.stat().st_size <= 4096 for p in [*rotated, path])
    assert rotated[0].name.startswith("results-20261130T08") and rotated[0].name.endswith("Z.jsonl")
    assert records([*rotated, path]) == [f.frame_id for f in frames]


def test_only_the_newest_rotated_files_are_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    with ResultsLog(path, max_bytes=4096, keep=2, now=Clock(datetime(2026, 11, 30, tzinfo=timezone.utc))) as log:
        for frame in make_frames(40):
            log.append(frame, JUDGED, "line-1")
        assert len(log.rotated()) == 2
        assert records([*log.rotated(), path])[-1] == "f039"


def test_rotates_when_a_new_day_starts_and_after_a_restart_on_a_later_day(tmp_path):
    path = tmp_path / "results.jsonl"
    clock = Clock(datetime(2026, 11, 30, 23, 59, 59, 990000, tzinfo=timezone.utc))
    frames = make_frames(4)
    with ResultsLog(path, daily=True, now=clock) as log:
        log.append(frames[0], JUDGED, "line-1")
        clock.t += timedelta(seconds=1)  # past midnight
        log.append(frames[1], JUDGED, "line-1")
        (yesterday,) = log.rotated()
    assert records([yesterday]) == ["f000"] and records([path]) == ["f001"]

    day_before = datetime(2026, 11, 30, 12, tzinfo=timezone.utc).timestamp()
    os.utime(path, (day_before, day_before))  # the file was last written on an earlier day
    with ResultsLog(path, daily=True, now=Clock(datetime(2026, 12, 2, 6, tzinfo=timezone.utc))) as log:
        assert not log.append(frames[1], JUDGED, "line-1")  # already logged: no rotation, no record
        log.append(frames[2], JUDGED, "line-1")
        assert len(log.rotated()) == 2
    assert records([path]) == ["f002"]


def test_a_frame_id_is_logged_once_and_a_torn_line_is_recovered(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"frame_id": "f000", "outcome": "judged"}\n{"frame_id": "f0')
    frames = make_frames(2)
    with ResultsLog(path) as log:
        assert not log.append(frames[0], JUDGED, "line-1")
        assert log.append(frames[1], JUDGED, "line-1")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["frame_id"] == "f001" and len(lines) == 3
