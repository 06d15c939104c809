"""The line monitor runs the line's part verdicts: views in from judged frames, verdicts stored and counted.

The replica's class is built without Ray (``LineMonitor.func_or_class``) on a real SQLite store, a real
outbox and the real aggregator. Time passes for real: a test of the deadline sets a short one, the
others a deadline no loaded machine reaches between two calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectline.config import StoreConfig
from inspectline.imaging import encode_png
from inspectline.serving.monitor import LineMonitor
from inspectline.serving.records import FrameMeta, FrameObservation, Judgement, MonitorBatch
from inspectline.store import FrameStore

T0 = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
IMAGE = encode_png(np.full((4, 4), 7, dtype=np.uint8))


def plant(deadline_ms: int) -> dict:
    station = {"name": "final", "cameras": ["top", "bottom", "side"], "deadline_ms": deadline_ms}
    return {"lines": {"line-1": {"stations": [station]}}}


def observation(camera: str, part: str | None, p: float) -> FrameObservation:
    frame_id = f"{part}-{camera}"
    judgement = Judgement(
        verdict="DEFECTIVE" if p >= 0.5 else "OK",
        defect_probability=p,
        confidence=max(p, 1 - p),
        threshold=0.5,
        model_version="v0001",
        views={"identity": p},
        engine="torch fp32",
        embedding=(0.0, 1.0),
        image_stats=(0.5, 0.1, 0.01, 0.0),
    )
    return FrameObservation(
        meta=FrameMeta(line_id="line-1", camera_id=camera, frame_id=frame_id, part_id=part),
        judgement=judgement,
        image=IMAGE,
        content_sha256=hashlib.sha256(IMAGE).hexdigest(),
        received_at=T0,
        latency_s=0.05,
    )


@pytest.fixture
def deadline_ms() -> int:
    return 60_000


@pytest.fixture
def monitor(tmp_path: Path, deadline_ms: int):
    store = StoreConfig(database_url=f"sqlite:///{tmp_path / 'frames.db'}", storage_url=str(tmp_path / "images"))
    config = plant(deadline_ms) | {"outbox": str(tmp_path / "outbox.sqlite3")}
    replica = LineMonitor.func_or_class(str(tmp_path / "models"), store.model_dump(mode="json"), str(tmp_path), config)
    yield replica, FrameStore(store)
    replica.__del__()  # what Serve calls when the replica stops: the deadline timer and the recorder end


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_three_views_of_a_part_give_one_stored_and_counted_verdict_by_the_rule(monitor):
    replica, store = monitor
    views = (observation("top", "P-1", 0.1), observation("bottom", "P-1", 0.92), observation("side", "P-1", 0.2))
    batch = MonitorBatch("b1", views)
    assert asyncio.run(replica.observe(batch)) == 3
    assert asyncio.run(replica.observe(batch)) == 3  # a re-delivered batch is neither a late view nor a new part
    [part] = store.find_part("P-1", line="line-1")
    assert (part.station, part.verdict, part.disposition, part.deadline_missed) == (
        "final",
        "DEFECTIVE",
        "reject",
        False,
    )
    assert [(v["camera_id"], v["frame_id"], v["verdict"]) for v in part.views] == [
        ("top", "P-1-top", "OK"),
        ("bottom", "P-1-bottom", "DEFECTIVE"),
        ("side", "P-1-side", "OK"),
    ]
    assert store.count() == 3  # the frames themselves are stored as before
    text = asyncio.run(replica.render())[0].decode()
    assert 'inspect_parts_total{line="line-1",station="final",verdict="DEFECTIVE"} 1.0' in text
    assert metric(text, "inspect_part_late_views_total") == 0
    assert metric(text, 'inspect_part_decision_seconds_count{line="line-1",station="final"}') == 1


@pytest.mark.parametrize("deadline_ms", [1000])
def test_a_part_with_a_view_missing_is_stored_as_no_result_after_its_deadline(monitor):
    replica, store = monitor
    asyncio.run(replica.observe(MonitorBatch("b1", (observation("top", "P-2", 0.1), observation("side", "P-2", 0.1)))))
    assert store.find_part("P-2") == []  # still waiting for the bottom view
    deadline = time.monotonic() + 10
    while not store.find_part("P-2") and time.monotonic() < deadline:
        time.sleep(0.05)  # the deadline timer decides it, with no frame arriving
    [part] = store.find_part("P-2")
    assert (part.verdict, part.missing, part.deadline_missed) == ("NO_RESULT", ("bottom",), True)
    text = asyncio.run(replica.render())[0].decode()
    assert metric(text, 'inspect_parts_deadline_missed_total{line="line-1",station="final"}') == 1


@pytest.mark.parametrize("deadline_ms", [300])
def test_frames_without_a_part_or_of_a_line_without_stations_make_no_part(monitor):
    replica, store = monitor
    other = FrameObservation(
        **{**observation("top", "P-3", 0.9).__dict__, "meta": FrameMeta("line-9", "top", "x", "P-3")}
    )
    asyncio.run(replica.observe(MonitorBatch("b1", (observation("top", None, 0.9), other))))
    time.sleep(0.5)  # past any deadline
    assert store.query_parts() == [] and store.count() == 2
    assert replica.parts.parts.ignored == {"unknown_line": 1}  # a frame without a part is not even submitted


def test_a_frame_delivered_again_in_another_batch_is_counted_once_and_makes_no_second_view(monitor):
    """At-least-once delivery: a dead gateway's journal adopted and resent travels under a new batch id."""
    replica, store = monitor
    top, bottom = observation("top", "P-4", 0.1), observation("bottom", "P-4", 0.1)
    asyncio.run(replica.observe(MonitorBatch("first", (top,))))
    asyncio.run(replica.observe(MonitorBatch("resent", (top, bottom))))  # top again, beside a new frame
    text = asyncio.run(replica.render())[0].decode()
    assert metric(text, 'inspect_frames_total{camera="top",line="line-1"') == 1
    assert metric(text, 'inspect_frames_total{camera="bottom",line="line-1"') == 1
    assert store.count() == 2
    asyncio.run(replica.observe(MonitorBatch("third", (observation("side", "P-4", 0.1),))))
    [part] = store.find_part("P-4")
    assert part.verdict == "OK" and [v["camera_id"] for v in part.views] == ["top", "bottom", "side"]
    assert metric(text, "inspect_part_late_views_total") == 0


def test_the_last_challenge_run_of_each_set_is_exported_with_the_line_metrics(monitor, tmp_path: Path):
    from inspectline.challenge import ChallengeResult, SampleResult, _store

    replica, _ = monitor
    text = asyncio.run(replica.render())[0].decode()
    assert "inspect_challenge_passed{" not in text  # no run yet: no series
    verdicts = ("OK", "UNSURE")
    samples = [SampleResult(f"s{i}", "OK", v, 0.1, "v0001", f"challenge-{i}") for i, v in enumerate(verdicts)]
    run = ChallengeResult("shift-start", "line-1", "top", "failed", T0.isoformat(), T0.isoformat(), samples=samples)
    _store(tmp_path / "models", run)
    text = asyncio.run(replica.render())[0].decode()
    labels = '{line="line-1",set="shift-start"}'
    assert f"inspect_challenge_passed{labels} 0.0" in text
    assert f"inspect_challenge_correct_ratio{labels} 0.5" in text
    assert metric(text, f"inspect_challenge_last_run_timestamp_seconds{labels}") == T0.timestamp()
