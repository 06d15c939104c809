"""The adapter end to end against a scripted service: order, exactly-once, outages, restarts, drops, metrics."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from inspectline.camera_adapters.folder import FolderSettings
from inspectline.camera_adapters.runner import AdapterSettings, run_adapter, run_camera, stop_on_signals
from inspectline.camera_adapters.source import SourceState
from inspectline.camera_adapters.uploader import UploadSettings
from inspectline.camera_adapters.video import VideoSettings, VideoSource
from inspectline.errors import ConfigError
from inspectline.monitoring.metrics import CameraMetrics
from tests.unit.camera_adapters.fakes import FakeService, ListSource, make_frames
from tests.unit.camera_adapters.test_video import write_video

LABELS = {"line": "line-1", "camera": "cam-1"}
FAST = UploadSettings(url="http://svc", backoff_initial_s=0.005, backoff_max_s=0.05)


def settings(tmp_path: Path, **changes) -> AdapterSettings:
    return AdapterSettings(upload=FAST, spool_dir=tmp_path / "spool", results_log=tmp_path / "results.jsonl", **changes)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metric(metrics: CameraMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def test_every_frame_judged_once_in_capture_order_through_transient_failures(tmp_path):
    service = FakeService(
        script=[
            "connect",
            (503, '{"error": "overloaded", "detail": "busy"}', {"Retry-After": "0"}),
            (404, "Path '/v1/frames' not found"),
            "judge-then-timeout",
        ]
    )
    frames = make_frames(12)
    source = ListSource(frames)
    metrics = CameraMetrics()
    summary = run_adapter(source, settings(tmp_path, queue_size=4), metrics=metrics, transport=service.transport())

    ids = [f.frame_id for f in frames]
    log = read_log(tmp_path / "results.jsonl")
    assert [r["frame_id"] for r in log] == ids
    assert [r["seq"] for r in log] == list(range(12))
    assert all(r["outcome"] == "judged" and r["verdict"] == "OK" for r in log)
    assert service.judged == dict.fromkeys(ids, 1)
    assert source.settled == [(i, "judged") for i in ids]
    assert (summary.captured, summary.judged, summary.retries, summary.duplicates, summary.dropped) == (12, 12, 4, 1, 0)
    assert summary.spooled_left == 0 and list((tmp_path / "spool" / "frames").iterdir()) == []
    assert metric(metrics, "inspect_camera_frames_captured_total") == 12
    assert metric(metrics, "inspect_camera_frames_sent_total") == 12
    assert metric(metrics, "inspect_camera_retries_total") == 4
    assert metric(metrics, "inspect_camera_frames_dropped_total") == 0
    assert metric(metrics, "inspect_camera_spooled_frames") == 0
    assert metric(metrics, "inspect_camera_post_duration_seconds_count") == 12


def test_final_rejections_are_not_retried_and_are_logged(tmp_path):
    service = FakeService(script=[(422, '{"error": "undecodable_image", "detail": "frame f000 is truncated"}')])
    source = ListSource(make_frames(3))
    metrics = CameraMetrics()
    summary = run_adapter(source, settings(tmp_path), metrics=metrics, transport=service.transport())

    assert sorted(service.frame_ids()) == ["f000", "f001", "f002"]  # one attempt each
    assert source.settled == [("f000", "rejected"), ("f001", "judged"), ("f002", "judged")]
    first = read_log(tmp_path / "results.jsonl")[0]
    assert (first["outcome"], first["status"], first["error"]) == ("rejected", 422, "undecodable_image")
    assert (summary.rejected, summary.judged, summary.retries) == (1, 2, 0)
    assert metric(metrics, "inspect_camera_frames_rejected_total", status="422") == 1


def test_an_outage_spools_frames_and_delivers_them_in_order_when_the_service_returns(tmp_path):
    service = FakeService(down=True)
    frames = make_frames(30)
    source = ListSource(frames, interval_s=0.01)
    # The service comes back only once the camera has taken every frame: the outage outlasts capture
    # however slowly a loaded machine runs the test.
    threading.Thread(target=lambda: (source.exhausted.wait(30), setattr(service, "down", False)), daemon=True).start()
    summary = run_adapter(source, settings(tmp_path, queue_size=4), transport=service.transport())

    ids = [f.frame_id for f in frames]
    assert summary.spooled_peak >= 15  # capture went on into the disk spool while nothing was delivered
    assert summary.retries >= 3 and summary.dropped == 0
    assert [r["frame_id"] for r in read_log(tmp_path / "results.jsonl")] == ids
    assert service.judged == dict.fromkeys(ids, 1)
    delivered = [r.url.params["frame_id"] for r in service.requests[summary.retries :]]
    assert sorted(delivered) == ids  # after the outage: each frame once (posts in flight may overtake)


def test_a_restart_delivers_spooled_frames_first_and_skips_what_is_still_spooled(tmp_path):
    frames = make_frames(15)
    down = FakeService(down=True)
    first = run_adapter(ListSource(frames[:10]), settings(tmp_path, drain_timeout_s=0.2), transport=down.transport())
    assert first.spooled_left == 10 and first.judged == 0
    assert sorted(p.name for p in (tmp_path / "spool" / "frames").iterdir())[0] == "000000000000.frame"

    # The restarted source yields the ten unsettled frames again (a replay resumes at its last settled
    # position), then five new ones.
    service = FakeService()
    source = ListSource(frames)
    second = run_adapter(source, settings(tmp_path), transport=service.transport())
    ids = [f.frame_id for f in frames]
    assert (second.skipped, second.captured, second.judged) == (10, 5, 15)
    assert sorted(service.frame_ids()) == ids and service.judged == dict.fromkeys(ids, 1)
    assert [r["frame_id"] for r in read_log(tmp_path / "results.jsonl")] == ids
    assert [r["seq"] for r in read_log(tmp_path / "results.jsonl")] == list(range(15))


def test_a_resent_frame_answered_as_duplicate_is_logged_once(tmp_path):
    service = FakeService()
    frames = make_frames(5)
    run_adapter(ListSource(frames), settings(tmp_path), transport=service.transport())
    again = run_adapter(ListSource(frames), settings(tmp_path), transport=service.transport())
    assert again.duplicates == 5
    assert [r["frame_id"] for r in read_log(tmp_path / "results.jsonl")] == [f.frame_id for f in frames]
    assert all(r["duplicate"] is False for r in read_log(tmp_path / "results.jsonl"))
    assert service.judged == {f.frame_id: 1 for f in frames}


def test_a_full_spool_drops_frames_and_says_so(tmp_path, caplog):
    frames = make_frames(8)
    source = ListSource(frames)
    metrics = CameraMetrics()
    one_frame = len(frames[0].image) + 300
    with caplog.at_level(logging.ERROR):
        summary = run_adapter(
            source,
            settings(tmp_path, queue_size=0, spool_max_bytes=3 * one_frame, drain_timeout_s=0.2),
            metrics=metrics,
            transport=FakeService(down=True).transport(),
        )
    assert summary.dropped == 5 and summary.spooled_left == 3
    assert metric(metrics, "inspect_camera_frames_dropped_total") == 5
    assert metric(metrics, "inspect_camera_spooled_frames") == 3
    assert [i for i, kind in source.settled if kind == "dropped"] == [f.frame_id for f in frames[3:]]
    assert caplog.text.count("DROPPED frame") == 5 and "spool" in caplog.text


def test_queue_size_zero_writes_every_frame_to_disk_before_sending(tmp_path):
    seen_on_disk = []
    service = FakeService()

    def handle(request: httpx.Request) -> httpx.Response:
        seen_on_disk.append(len(list((tmp_path / "spool" / "frames").iterdir())))
        return service.handle(request)

    summary = run_adapter(
        ListSource(make_frames(4)), settings(tmp_path, queue_size=0), transport=httpx.MockTransport(handle)
    )
    assert summary.judged == 4 and all(n >= 1 for n in seen_on_disk)


def test_metrics_are_served_on_the_configured_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = FakeService()
    stop = threading.Event()
    source = ListSource(make_frames(3), endless=True)
    runner = threading.Thread(
        target=run_adapter,
        args=(source, settings(tmp_path, metrics_port=port)),
        kwargs={"stop": stop, "transport": service.transport()},
    )
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while sum(service.judged.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        stop.set()
        runner.join()
    assert 'inspect_camera_frames_sent_total{camera="cam-1",line="line-1"} 3.0' in text
    assert "inspect_camera_post_duration_seconds_bucket" in text


def test_one_adapter_per_spool_folder(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stop = threading.Event()
    adapter = settings(tmp_path)
    first = threading.Thread(
        target=run_camera,
        args=(FolderSettings(path=inbox, poll_interval_s=0.05), adapter),
        kwargs={"stop": stop, "transport": FakeService().transport()},
    )
    first.start()
    try:
        time.sleep(0.3)
        with pytest.raises(ConfigError, match="in use by another adapter"):
            run_camera(FolderSettings(path=inbox), adapter, transport=FakeService().transport())
    finally:
        stop.set()
        first.join()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("camera_id", "cam 1", "not a valid id"), ("queue_size", -1, "greater than or equal")],
)
def test_adapter_settings_name_the_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdapterSettings(**{field: value})


def test_stopping_puts_frames_still_in_memory_into_the_spool(tmp_path):
    service = FakeService()

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.1)
        return service.handle(request)

    stop = threading.Event()
    threading.Timer(0.35, stop.set).start()
    frames = make_frames(40)  # four posts in flight of 0.1 s each: far from all of them by 0.35 s
    summary = run_adapter(
        ListSource(frames, endless=True),
        settings(tmp_path, queue_size=64),
        stop=stop,
        transport=httpx.MockTransport(slow),
    )
    assert 1 <= summary.judged < 40 and summary.judged + summary.spooled_left == 40
    resumed = run_adapter(ListSource([]), settings(tmp_path), transport=service.transport())
    assert resumed.judged == 40 - summary.judged
    assert [r["frame_id"] for r in read_log(tmp_path / "results.jsonl")] == [f.frame_id for f in frames]


def test_the_first_signal_stops_the_adapter_and_the_second_acts_as_usual():
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGTERM) is before


def test_stream_reconnects_are_counted_in_the_metrics(tmp_path):
    video = write_video(tmp_path / "clip.avi", 5)  # as a "stream", it ends every five frames
    source = VideoSource(
        VideoSettings(source=str(video), live=True, max_frames=12, reconnect_initial_s=0.01),
        "cam-1",
        SourceState(tmp_path / "state.json"),
    )
    metrics = CameraMetrics()
    summary = run_adapter(source, settings(tmp_path), metrics=metrics, transport=FakeService().transport())
    assert summary.judged == 12 and source.reconnects >= 2
    assert metric(metrics, "inspect_camera_reconnects_total") == source.reconnects


def test_sources_that_never_reconnect_export_the_counter_at_zero(tmp_path):
    metrics = CameraMetrics()
    run_adapter(ListSource(make_frames(2)), settings(tmp_path), metrics=metrics, transport=FakeService().transport())
    assert metrics.registry.get_sample_value("inspect_camera_reconnects_total", LABELS) == 0.0
