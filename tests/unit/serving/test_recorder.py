"""The frame store writer: an outage grows the backlog, nothing is lost, order is kept."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectline.config import StoreConfig
from inspectline.errors import StoreError
from inspectline.imaging import encode_png
from inspectline.serving.recorder import FrameRecorder
from inspectline.store import FrameRecord, FrameStore, ShadowVerdict

T0 = datetime(2026, 11, 22, 8, tzinfo=timezone.utc)


def record(i: int, verdict: str = "DEFECTIVE") -> FrameRecord:
    return FrameRecord(
        camera_id="cam-1",
        frame_id=f"f{i:04d}",
        line_id="line-1",
        part_id=f"p{i}",
        captured_at=None,
        received_at=T0 + timedelta(seconds=i),
        verdict=verdict,
        defect_probability=0.9,
        confidence=0.9,
        threshold=0.5,
        model_version="v0001",
        views={"identity": 0.9},
        image=encode_png(np.full((8, 8), i % 256, np.uint8)),
        image_format=None,
    )


class Switchable:
    """Opens the real store only while ``up``; writes through it fail while down."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.up = False
        self.store: FrameStore | None = None

    def open(self) -> Switchable:
        if not self.up:
            raise StoreError("database unreachable (test outage)")
        return self

    def add_frames(self, frames):
        if not self.up:
            raise StoreError("database unreachable (test outage)")
        self.store = self.store or FrameStore(self.config)
        return self.store.add_frames(frames)

    def add_shadow_verdicts(self, rows):
        self.store = self.store or FrameStore(self.config)
        return self.store.add_shadow_verdicts(rows)

    def close(self) -> None:
        pass


def wait(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(
        database_url=f"sqlite:///{tmp_path / 'f.db'}", storage_url=str(tmp_path / "images"), keep_ok_images=1.0
    )


def test_an_outage_keeps_every_frame_and_writes_it_later_in_order(config, tmp_path):
    store = Switchable(config)
    recorder = FrameRecorder(store.open, spool_dir=tmp_path / "spool", max_backoff_s=0.2)
    try:
        started = time.perf_counter()
        for i in range(10):
            recorder.submit([record(i)])
        assert time.perf_counter() - started < 1.0  # submit never waits for the store
        time.sleep(0.5)
        assert recorder.backlog == 10 and recorder.failures >= 1
        store.up = True
        wait(lambda: recorder.backlog == 0)
        rows = FrameStore(config).query(order="oldest", limit=100)
        assert [r.frame_id for r in rows] == [f"f{i:04d}" for i in range(10)]
    finally:
        recorder.close()


def test_past_the_bound_the_backlog_spills_to_disk_and_survives_a_restart(config, tmp_path):
    store = Switchable(config)
    spool = tmp_path / "spool"
    recorder = FrameRecorder(store.open, spool_dir=spool, max_backlog=4, max_backoff_s=0.2)
    recorder.submit([record(i) for i in range(10)], [ShadowVerdict("line-1", "cam-1", "f0000", "v0002", "OK", 0.2, T0)])
    assert len(list(spool.glob("batch-*.json"))) == 1 and recorder.backlog == 10
    recorder.close(timeout_s=1)  # store still down: the in-memory rest is spooled too
    assert recorder.backlog == 10 and len(list(spool.glob("batch-*.json"))) == 2
    store.up = True
    again = FrameRecorder(store.open, spool_dir=spool, max_backoff_s=0.2)
    try:
        wait(lambda: again.backlog == 0)
        reopened = FrameStore(config)
        assert reopened.count() == 10
        shadows = reopened.shadow_verdicts(reopened.find("line-1", "cam-1", "f0000").id)
        assert [(v.line_id, v.model_version) for v in shadows] == [("line-1", "v0002")]
        assert not list(spool.iterdir())
    finally:
        again.close()


def test_a_record_the_store_would_refuse_is_dropped_at_once_not_retried(config, tmp_path):
    store = Switchable(config)
    store.up = True
    recorder = FrameRecorder(store.open, spool_dir=tmp_path / "spool")
    try:
        bad = FrameRecord(**{**record(1).__dict__, "verdict": "MAYBE"})
        assert recorder.submit([record(0), bad, record(2)]) == 1
        wait(lambda: recorder.backlog == 0)
        assert [r.frame_id for r in FrameStore(config).query(order="oldest")] == ["f0000", "f0002"]
    finally:
        recorder.close()
