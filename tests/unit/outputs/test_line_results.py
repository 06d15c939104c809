"""LineResults end to end with scripted outputs: parts to the outbox, in order, retried, refused, restarted."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
from prometheus_client import CollectorRegistry

from inspectline.config import WebhookOutput, build_config
from inspectline.monitoring.metrics import PartMetrics
from inspectline.outputs.line import LineResults
from inspectline.outputs.outbox import DeliveryError, DeliveryRefused, OutboxItem
from inspectline.outputs.webhook import WebhookPublisher
from inspectline.serving.parts import FrameVerdict

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


class ScriptedOutput:
    """Records what it delivered; ``script`` says how the next attempts end ("fail", "refuse" or "ok")."""

    def __init__(self, name: str = "mqtt", script: list[str] | None = None):
        self.name = name
        self.script = list(script or [])
        self.attempts: list[int] = []
        self.delivered: list[dict] = []
        self.closed = False
        self.block = threading.Event()
        self.block.set()

    def deliver(self, item: OutboxItem) -> None:
        self.block.wait()
        self.attempts.append(item.seq)
        step = self.script.pop(0) if self.script else "ok"
        if step == "fail":
            raise DeliveryError("broker down")
        if step == "refuse":
            raise DeliveryRefused("HTTP 400: no")
        if step == "crash":
            raise KeyError("a library bug")
        self.delivered.append(item.document)

    def close(self) -> None:
        self.closed = True


def plant(tmp_path, deadline_ms: float = 60_000, **outputs):
    line = {
        "stations": [{"name": "final", "cameras": ["top", "bottom"], "deadline_ms": deadline_ms}],
        "outputs": outputs or {"mqtt": {}},
    }
    raw = {"outbox": str(tmp_path / "outbox.db"), "backoff_initial_s": 0.001, "backoff_max_s": 0.01}
    return build_config({"plant": {**raw, "lines": {"line-1": line}}}).plant


def frame(camera: str, part: str, verdict: str = "OK") -> FrameVerdict:
    return FrameVerdict("line-1", camera, part, f"{camera}-{part}", verdict, 0.9 if verdict != "OK" else 0.1, T0)


def started(cfg, outputs, **kwargs) -> LineResults:
    results = LineResults(cfg, build=lambda _plant, _outbox: ({"line-1": outputs}, lambda: None), **kwargs)
    results.start()
    return results


def wait_until(predicate, timeout=10.0, what=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.005)


def sample(metrics: PartMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_parts_reach_every_output_in_order_through_failures_and_crashes(tmp_path):
    mqtt = ScriptedOutput("mqtt", ["fail", "fail", "crash"])
    webhook = ScriptedOutput("webhook", ["ok", "refuse"])
    metrics = PartMetrics(CollectorRegistry())
    stored = []
    cfg = plant(tmp_path, mqtt={}, webhook={"url": "http://plant/hook"})
    results = started(cfg, [mqtt, webhook], metrics=metrics, on_part=stored.append)
    try:
        for i in range(6):
            results.submit(frame("top", f"P{i}", "DEFECTIVE" if i == 2 else "OK"))
            (part,) = results.submit(frame("bottom", f"P{i}"))
            assert part.part_id == f"P{i}"
        wait_until(lambda: (len(mqtt.delivered), len(webhook.delivered)) == (6, 5), what=lambda: mqtt.attempts)
    finally:
        results.stop()
    assert [d["seq"] for d in mqtt.delivered] == [1, 2, 3, 4, 5, 6]
    assert [d["part_id"] for d in mqtt.delivered] == [f"P{i}" for i in range(6)]
    assert mqtt.attempts[:4] == [1, 1, 1, 1]  # the same verdict until it went through
    assert [d["seq"] for d in webhook.delivered] == [1, 3, 4, 5, 6]  # seq 2 refused for good, then skipped
    third = mqtt.delivered[2]
    assert (third["verdict"], third["disposition"], third["views"][0]["camera_id"]) == ("DEFECTIVE", "reject", "top")
    assert [p.part_id for p in stored] == [f"P{i}" for i in range(6)]
    assert mqtt.closed and webhook.closed
    assert sample(metrics, "inspect_parts_total", line="line-1", station="final", verdict="OK") == 5
    assert sample(metrics, "inspect_parts_total", line="line-1", station="final", verdict="DEFECTIVE") == 1
    failures = "inspect_output_delivery_failures_total"
    assert sample(metrics, failures, line="line-1", output="mqtt", kind="retry") == 3
    assert sample(metrics, failures, line="line-1", output="webhook", kind="refused") == 1
    assert sample(metrics, "inspect_output_delivered_total", line="line-1", output="mqtt") == 6
    assert sample(metrics, "inspect_outbox_backlog", line="line-1", output="mqtt") == 0
    assert sample(metrics, "inspect_part_decision_seconds_count", line="line-1", station="final") == 6


def test_the_deadline_timer_decides_parts_whose_views_never_come(tmp_path):
    output = ScriptedOutput()
    metrics = PartMetrics(CollectorRegistry())
    results = started(plant(tmp_path, deadline_ms=50), [output], metrics=metrics)
    try:
        started_at = time.monotonic()
        results.submit(frame("top", "P1"))
        wait_until(lambda: output.delivered)
        took = time.monotonic() - started_at
        results.submit(frame("bottom", "P1"))  # late
    finally:
        results.stop()
    (doc,) = output.delivered
    assert (doc["verdict"], doc["missing"], doc["deadline_missed"]) == ("NO_RESULT", ["bottom"], True)
    assert 0.05 <= took < 2.0
    assert sample(metrics, "inspect_parts_deadline_missed_total", line="line-1", station="final") == 1
    assert sample(metrics, "inspect_part_late_views_total", line="line-1") == 1


def test_verdicts_waiting_at_a_stop_are_delivered_after_the_next_start(tmp_path):
    cfg = plant(tmp_path)
    stuck = ScriptedOutput(script=["fail"] * 10_000)
    first = started(cfg, [stuck])
    for i in range(4):
        first.submit(frame("top", f"P{i}"))
        first.submit(frame("bottom", f"P{i}"))
    wait_until(lambda: len(stuck.attempts) >= 2)
    assert first.backlog() == {("line-1", "mqtt"): 4}
    first.stop()

    output = ScriptedOutput()
    second = started(cfg, [output])
    try:
        second.submit(frame("top", "P4"))
        second.submit(frame("bottom", "P4"))
        wait_until(lambda: len(output.delivered) == 5)
        assert second.backlog() == {("line-1", "mqtt"): 0}
    finally:
        second.stop()
    assert [d["seq"] for d in output.delivered] == [1, 2, 3, 4, 5]
    assert [d["part_id"] for d in output.delivered] == ["P0", "P1", "P2", "P3", "P4"]


def test_a_failing_part_listener_does_not_stop_delivery(tmp_path):
    output = ScriptedOutput()

    def broken(_part):
        raise RuntimeError("store down")

    results = started(plant(tmp_path), [output], on_part=broken)
    try:
        results.submit(frame("top", "P1"))
        results.submit(frame("bottom", "P1"))
        wait_until(lambda: output.delivered)
    finally:
        results.stop()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (204, None),
        (503, DeliveryError),
        (429, DeliveryError),
        (408, DeliveryError),
        (400, DeliveryRefused),
        (404, DeliveryRefused),
    ],
)
def test_webhook_answers_decide_between_retry_and_refusal(status, outcome, monkeypatch):
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text="nope" if status >= 400 else "")

    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    hook = WebhookPublisher(
        WebhookOutput(url="http://plant/hook", token_env="HOOK_TOKEN", headers={"X-Plant": "north"}),
        "line-1",
        transport=httpx.MockTransport(handle),
    )
    item = OutboxItem("line-1", 7, 0.0, {"part_id": "P7", "verdict": "OK"})
    if outcome is None:
        hook.deliver(item)
    else:
        with pytest.raises(outcome, match=f"HTTP {status}"):
            hook.deliver(item)
    request = seen[0]
    assert json.loads(request.content) == {"seq": 7, "part_id": "P7", "verdict": "OK"}
    assert request.headers["Idempotency-Key"] == "line-1:7" and request.headers["X-Inspectline-Seq"] == "7"
    assert request.headers["Authorization"] == "Bearer s3cret" and request.headers["X-Plant"] == "north"


def test_an_unreachable_webhook_is_retried():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    hook = WebhookPublisher(WebhookOutput(url="http://plant/hook"), "line-1", transport=httpx.MockTransport(refuse))
    with pytest.raises(DeliveryError, match="unreachable"):
        hook.deliver(OutboxItem("line-1", 1, 0.0, {}))
