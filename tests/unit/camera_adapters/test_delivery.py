"""Several posts in flight per camera: capture order kept, frames that keep failing quarantined."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest

from inspectline.camera_adapters.runner import AdapterSettings, run_adapter
from inspectline.camera_adapters.uploader import UploadSettings
from inspectline.monitoring.metrics import CameraMetrics
from tests.unit.camera_adapters.fakes import FakeService, ListSource, make_frames

FAST = UploadSettings(url="http://svc", backoff_initial_s=0.005, backoff_max_s=0.02)
LABELS = {"line": "line-1", "camera": "cam-1"}


def settings(tmp_path, **changes) -> AdapterSettings:
    return AdapterSettings(upload=FAST, spool_dir=tmp_path / "spool", results_log=tmp_path / "results.jsonl", **changes)


def read_log(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]


class Concurrent:
    """Answers after a random delay, so answers come back out of order; records the most posts at once."""

    def __init__(self, service: FakeService, seed: int = 0):
        self.service, self.rng = service, random.Random(seed)
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            delay = 0.02 + self.rng.random() * 0.04
        time.sleep(delay)
        try:
            return self.service.handle(request)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("max_in_flight", [1, 4])
def test_posts_in_flight_never_change_capture_order(tmp_path, max_in_flight):
    service = FakeService()
    concurrent = Concurrent(service)
    frames = make_frames(24)
    source = ListSource(frames)
    summary = run_adapter(
        source, settings(tmp_path, max_in_flight=max_in_flight), transport=httpx.MockTransport(concurrent.handle)
    )
    ids = [f.frame_id for f in frames]
    assert concurrent.peak == max_in_flight
    assert [r["frame_id"] for r in read_log(tmp_path)] == ids
    assert [r["seq"] for r in read_log(tmp_path)] == list(range(24))
    assert source.settled == [(i, "judged") for i in ids]
    assert service.judged == dict.fromkeys(ids, 1) and summary.judged == 24


def test_an_outage_with_posts_in_flight_loses_and_reorders_nothing(tmp_path):
    service = FakeService(script=["judge-then-timeout", "connect", "connect"])
    frames = make_frames(20)
    source = ListSource(frames, interval_s=0.002)
    summary = run_adapter(source, settings(tmp_path, max_in_flight=4, queue_size=2), transport=service.transport())
    ids = [f.frame_id for f in frames]
    assert [r["frame_id"] for r in read_log(tmp_path)] == ids
    assert service.judged == dict.fromkeys(ids, 1) and summary.retries == 3 and summary.spooled_left == 0


def test_a_frame_that_keeps_getting_5xx_is_quarantined_and_the_queue_moves_on(tmp_path):
    service = FakeService()
    attempts = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params["frame_id"] == "f002":
            attempts.append(time.monotonic())
            return httpx.Response(500, json={"error": "internal_error", "detail": "the engine failed on this frame"})
        return service.handle(request)

    frames = make_frames(6)
    source = ListSource(frames)
    metrics = CameraMetrics()
    summary = run_adapter(
        source, settings(tmp_path, quarantine_after=3), metrics=metrics, transport=httpx.MockTransport(handle)
    )
    assert len(attempts) == 3
    log = read_log(tmp_path)
    assert [(r["frame_id"], r["outcome"]) for r in log] == [
        (f.frame_id, "quarantined" if f.frame_id == "f002" else "judged") for f in frames
    ]
    assert log[2]["status"] == 500 and "the engine failed on this frame" in log[2]["detail"]
    assert ("f002", "quarantined") in source.settled
    (image,) = (tmp_path / "spool" / "quarantine").glob("*.png")
    assert image.read_bytes() == frames[2].image and image.name == "000000000002-f002.png"
    reason = json.loads(image.with_name(image.name + ".json").read_text())
    assert (reason["frame_id"], reason["attempts"], reason["status"]) == ("f002", 3, 500)
    assert "3 answers with a server error" in reason["reason"]
    assert summary.quarantined == 1 and summary.judged == 5 and summary.spooled_left == 0
    assert metrics.registry.get_sample_value("inspect_camera_frames_quarantined_total", LABELS) == 1


def test_a_frame_id_conflict_is_quarantined_at_once_with_the_reason_and_never_retried(tmp_path):
    service = FakeService()
    attempts = []
    conflict = {
        "error": "frame_id_conflict",
        "detail": "frame id f001 was judged before for other image bytes",
        "first_sha256": "a" * 64,
        "sent_sha256": "b" * 64,
    }

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params["frame_id"] == "f001":
            attempts.append(request)
            return httpx.Response(409, json=conflict)
        return service.handle(request)

    frames = make_frames(4)
    source = ListSource(frames)
    metrics = CameraMetrics()
    summary = run_adapter(
        source, settings(tmp_path, quarantine_after=3), metrics=metrics, transport=httpx.MockTransport(handle)
    )
    assert len(attempts) == 1  # not retried
    assert [(r["frame_id"], r["outcome"]) for r in read_log(tmp_path)] == [
        (f.frame_id, "quarantined" if f.frame_id == "f001" else "judged") for f in frames
    ]
    (image,) = (tmp_path / "spool" / "quarantine").glob("*.png")
    assert image.read_bytes() == frames[1].image
    reason = json.loads(image.with_name(image.name + ".json").read_text())
    assert (reason["frame_id"], reason["status"], reason["attempts"]) == ("f001", 409, 1)
    assert reason["reason"] == f"HTTP 409 frame_id_conflict: {conflict['detail']}"
    assert (reason["first_sha256"], reason["sent_sha256"]) == ("a" * 64, "b" * 64)
    assert summary.quarantined == 1 and summary.rejected == 0 and summary.retries == 0 and summary.judged == 3
    assert metrics.registry.get_sample_value("inspect_camera_frames_quarantined_total", LABELS) == 1
    assert metrics.registry.get_sample_value("inspect_camera_frames_rejected_total", LABELS | {"status": "409"}) is None


def test_busy_answers_never_quarantine_a_frame(tmp_path):
    busy = (503, '{"error": "overloaded", "detail": "busy"}', {"Retry-After": "0"})
    service = FakeService(script=[busy] * 6)
    summary = run_adapter(
        ListSource(make_frames(2)),
        settings(tmp_path, quarantine_after=2, max_in_flight=1),
        transport=service.transport(),
    )
    assert summary.quarantined == 0 and summary.judged == 2 and summary.retries == 6
    assert not (tmp_path / "spool" / "quarantine").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("max_in_flight", 0, "greater than or equal to 1"), ("quarantine_after", 0, "greater than or equal to 1")],
)
def test_delivery_settings_name_the_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdapterSettings(**{field: value})


def test_waiting_out_an_outage_does_not_spin(tmp_path):
    """The delivery loop sleeps between retries: a line PC must not lose a core to a down service."""
    slow_backoff = UploadSettings(url="http://svc", backoff_initial_s=0.2, backoff_max_s=0.2)
    adapter = AdapterSettings(upload=slow_backoff, spool_dir=tmp_path / "spool", drain_timeout_s=1.5)
    started = time.thread_time()
    summary = run_adapter(ListSource(make_frames(6)), adapter, transport=FakeService(down=True).transport())
    used = time.thread_time() - started
    assert summary.spooled_left == 6 and 2 <= summary.retries <= 15
    assert used < 0.5, f"the delivery thread used {used:.2f} s of CPU in a 1.5 s outage"
