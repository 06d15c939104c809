"""The frame store writer: a batch is durable when it returns; an outage spools, nothing is lost, order is kept."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectline.config import StoreConfig
from inspectline.errors import StoreError
from inspectline.imaging import encode_png
from inspectline.serving.recorder import FrameRecorder
from inspectline.store import FrameRecord, FrameStore, PartRecord, ShadowVerdict

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

    def add_parts(self, parts):
        if not self.up:
            raise StoreError("database unreachable (test outage)")
        self.store = self.store or FrameStore(self.config)
        return self.store.add_parts(parts)

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


def test_a_batch_is_durable_when_record_returns_even_while_the_store_is_down(config, tmp_path):
    store = Switchable(config)
    recorder = FrameRecorder(store.open, spool_dir=tmp_path / "spool", max_backoff_s=0.2)
    try:
        for i in range(10):
            assert recorder.record([record(i)]) == 0  # spooled: durable, and the caller may acknowledge it
        assert recorder.backlog == 10 and recorder.failures >= 1
        assert len(list((tmp_path / "spool").glob("batch-*.json"))) == 10
        store.up = True
        wait(lambda: recorder.backlog == 0)
        rows = FrameStore(config).query(order="oldest", limit=100)
        assert [r.frame_id for r in rows] == [f"f{i:04d}" for i in range(10)]  # in order
        recorder.record([record(10)])  # healthy again: straight to the store
        assert FrameStore(config).count() == 11 and recorder.backlog == 0
    finally:
        recorder.close()


def test_the_spool_survives_a_restart_and_drains_into_the_store(config, tmp_path):
    store = Switchable(config)
    spool = tmp_path / "spool"
    recorder = FrameRecorder(store.open, spool_dir=spool, max_backoff_s=0.2)
    recorder.record([record(i) for i in range(10)], [ShadowVerdict("line-1", "cam-1", "f0000", "v0002", "OK", 0.2, T0)])
    recorder.close(timeout_s=1)  # the monitor stops while the store is still down
    assert len(list(spool.glob("batch-*.json"))) == 1
    store.up = True
    again = FrameRecorder(store.open, spool_dir=spool, max_backoff_s=0.2)
    try:
        wait(lambda: again.backlog == 0)
        reopened = FrameStore(config)
        assert reopened.count() == 10
        shadow = reopened.shadow_verdicts(reopened.find("line-1", "cam-1", "f0000").id)
        assert [v.model_version for v in shadow] == ["v0002"]
        assert not list(spool.glob("batch-*.json"))
    finally:
        again.close()


def part(part_id: str, verdict: str = "DEFECTIVE") -> PartRecord:
    view = {
        "camera_id": "cam-1",
        "frame_id": f"f-{part_id}",
        "verdict": "DEFECTIVE",
        "defect_probability": 0.9,
        "model_version": "v0001",
        "received_at": T0.isoformat(),
    }
    return PartRecord(
        line_id="line-1",
        station="main",
        part_id=part_id,
        verdict=verdict,
        disposition="reject",
        reason="DEFECTIVE in view cam-1 p=0.900",
        views=(view,),
        missing=("cam-2",),
        deadline_missed=True,
        first_view_at=T0,
        decided_at=T0 + timedelta(seconds=1),
        decision_seconds=1.0,
    )


def test_part_verdicts_decided_while_the_store_is_down_are_spooled_and_survive_a_restart(config, tmp_path):
    store = Switchable(config)
    spool = tmp_path / "spool"
    recorder = FrameRecorder(store.open, spool_dir=spool, max_backoff_s=0.2)
    assert recorder.record([], parts=[part("P-1"), part("P-2", verdict="MAYBE")]) == 1  # the bad one refused
    recorder.close(timeout_s=1)
    assert len(list(spool.glob("batch-*.json"))) == 1
    store.up = True
    again = FrameRecorder(store.open, spool_dir=spool, max_backoff_s=0.2)
    try:
        wait(lambda: not list(spool.glob("batch-*.json")))
        [stored] = FrameStore(config).find_part("P-1")
        assert stored.views == part("P-1").views and stored.missing == ("cam-2",) and stored.deadline_missed
        again.record([record(0)], parts=[part("P-3")])  # healthy: straight to the store, frames and parts together
        assert [p.part_id for p in FrameStore(config).query_parts(order="oldest")] == ["P-1", "P-3"]
    finally:
        again.close()


def test_a_record_the_store_would_refuse_is_dropped_at_once_not_retried(config, tmp_path):
    store = Switchable(config)
    store.up = True
    recorder = FrameRecorder(store.open, spool_dir=tmp_path / "spool")
    try:
        bad = FrameRecord(**{**record(1).__dict__, "verdict": "MAYBE"})
        assert recorder.record([record(0), bad, record(2)]) == 1
        assert recorder.backlog == 0
        assert [r.frame_id for r in FrameStore(config).query(order="oldest")] == ["f0000", "f0002"]
    finally:
        recorder.close()


def test_batches_spooled_by_the_previous_version_are_written_too(config, tmp_path):
    """Before frames were keyed by line, the recorder spooled one folder up, and shadows carried no line."""
    old = FrameRecorder(Switchable(config).open, spool_dir=tmp_path / "spool", max_backoff_s=0.2)
    old.record([record(0)])
    old.close(timeout_s=1)
    [batch] = (tmp_path / "spool").glob("batch-*.json")
    doc = json.loads(batch.read_text())
    doc["shadows"] = [
        {
            "camera_id": "cam-1",
            "frame_id": "f0000",
            "model_version": "v0002",
            "verdict": "OK",
            "defect_probability": 0.2,
            "received_at": {"$datetime": T0.isoformat()},
        }
    ]
    batch.write_text(json.dumps(doc))
    store = Switchable(config)
    store.up = True
    new = FrameRecorder(store.open, spool_dir=tmp_path / "spool" / "store", legacy_spool_dir=tmp_path / "spool")
    try:
        wait(lambda: new.backlog == 0)
        reopened = FrameStore(config)
        frame = reopened.find("line-1", "cam-1", "f0000")
        assert [v.line_id for v in reopened.shadow_verdicts(frame.id)] == ["line-1"]
    finally:
        new.close()
