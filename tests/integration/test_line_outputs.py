"""Results to the line against the real things: a Mosquitto broker with a real subscriber (stopped and
restarted mid-stream), asyncua's server with a client doing the PLC's handshake, and a webhook receiver
on loopback. Run with ``-s`` to see the outage figures.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from inspectline.config import build_config
from inspectline.outputs.line import LineResults
from inspectline.serving.parts import FrameVerdict
from tests.integration.conftest import free_port
from tests.system_packages import find_program, needs

pytestmark = pytest.mark.integration
mqtt = pytest.importorskip("paho.mqtt.client", reason="pip install 'inspectline[line]' (paho-mqtt)")
MOSQUITTO = find_program("mosquitto")
needs_mosquitto = needs("mosquitto")


class Broker:
    """A Mosquitto on a free loopback port; persistence on, so a subscriber's session outlives a restart."""

    def __init__(self, folder: Path):
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nlog_dest stderr\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would switch to user mosquitto and not write here
        )
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while "running" not in self.log.read_text() and "Opening ipv4 listen socket" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"mosquitto did not start: {self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A real MQTT client with a persistent session (QoS 1), recording every message in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "plc-line-1"):
        self.messages: list[dict] = []
        self.retained: list[bool] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _message(self, _client, _userdata, message) -> None:
        self.messages.append(json.loads(message.payload))
        self.retained.append(bool(message.retain))

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def plant(tmp_path: Path, **outputs):
    line = {"stations": [{"name": "final", "cameras": ["top"], "deadline_ms": 500}], "outputs": outputs}
    raw = {"outbox": str(tmp_path / "outbox.db"), "backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    return build_config({"plant": {**raw, "lines": {"line-1": line}}}).plant


def part(i: int) -> FrameVerdict:
    verdict = "DEFECTIVE" if i % 4 == 0 else "OK"
    probability = 0.9 if verdict != "OK" else 0.1
    return FrameVerdict("line-1", "top", f"P{i:03d}", f"top-{i:03d}", verdict, probability, datetime.now(timezone.utc))


def wait_until(predicate, timeout: float = 30.0, what: str = "") -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def in_order_without_gaps(seqs: list[int], n: int) -> bool:
    """At-least-once, in order: each verdict first arrives after every earlier one, none is skipped.

    A duplicate may come late: a publish the client library still held from before the broker went away
    can be delivered after the outbox's own retry of it and the verdicts that followed. A PLC keeps the
    highest sequence number it has seen and ignores anything at or below it, so a late duplicate is
    harmless; a verdict first arriving before an earlier one, or never, is not.
    """
    first = list(dict.fromkeys(seqs))
    return first == list(range(1, n + 1))


@needs_mosquitto
def test_mqtt_every_verdict_in_order_through_a_broker_restart(broker, tmp_path):
    subscriber = Subscriber(broker.port, "inspectline/line-1/parts")
    results = LineResults(plant(tmp_path, mqtt={"port": broker.port, "timeout_s": 1.0}))
    results.start()
    try:
        for i in range(1, 11):
            results.submit(part(i))
        wait_until(lambda: len(set(subscriber.seqs())) == 10, what="the first 10 verdicts")

        broker.stop()
        outage_started = time.monotonic()
        for i in range(11, 31):  # the line goes on while the broker is down
            results.submit(part(i))
            time.sleep(0.01)
        wait_until(lambda: results.backlog()[("line-1", "mqtt")] >= 19, what="a backlog while the broker is down")
        backlog_peak = results.backlog()[("line-1", "mqtt")]
        broker.start()
        restarted = time.monotonic()
        for i in range(31, 41):
            results.submit(part(i))
        drain = wait_until(lambda: len(set(subscriber.seqs())) == 40, what="all 40 verdicts after the restart")
    finally:
        results.stop()
        subscriber.close()
    seqs = subscriber.seqs()
    assert in_order_without_gaps(seqs, 40), f"arrival order {seqs}"
    first = {m["seq"]: m for m in reversed(subscriber.messages)}
    assert [first[s]["part_id"] for s in range(1, 41)] == [f"P{i:03d}" for i in range(1, 41)]
    assert first[4]["verdict"] == "DEFECTIVE" and first[4]["disposition"] == "reject"
    assert first[4]["views"][0]["frame_id"] == "top-004"
    print(
        f"\nMQTT outage: broker down {restarted - outage_started:.2f} s, backlog peak {backlog_peak}, "
        f"all 40 delivered {drain:.2f} s after the restart, {len(seqs) - 40} duplicates"
    )


@needs_mosquitto
def test_mqtt_retained_last_verdict_reaches_a_late_subscriber(broker, tmp_path):
    mqtt_settings = {"port": broker.port, "retain": True, "topic": "plant/{line}/{station}"}
    results = LineResults(plant(tmp_path, mqtt=mqtt_settings))
    results.start()
    try:
        for i in range(1, 4):
            results.submit(part(i))
        wait_until(lambda: results.backlog()[("line-1", "mqtt")] == 0, what="delivery")
        late = Subscriber(broker.port, "plant/line-1/final", client_id="late-dashboard")
        wait_until(lambda: late.messages, what="the retained verdict")
        late.close()
    finally:
        results.stop()
    assert late.seqs() == [3] and late.retained == [True]


@needs_mosquitto
def test_mqtt_verdicts_waiting_at_a_service_restart_are_delivered_by_the_next_run(broker, tmp_path):
    subscriber = Subscriber(broker.port, "inspectline/line-1/parts")
    cfg = plant(tmp_path, mqtt={"port": broker.port, "timeout_s": 0.5})
    broker.stop()
    first = LineResults(cfg)
    first.start()
    for i in range(1, 6):
        first.submit(part(i))
    first.stop()  # service stops with five verdicts undelivered
    broker.start()
    second = LineResults(cfg)
    second.start()
    try:
        second.submit(part(6))
        wait_until(lambda: len(set(subscriber.seqs())) == 6, what="six verdicts")
    finally:
        second.stop()
        subscriber.close()
    assert in_order_without_gaps(subscriber.seqs(), 6)


def test_opcua_plc_handshake_in_order_with_a_slow_acknowledge_and_a_restart(tmp_path):
    asyncua = pytest.importorskip("asyncua", reason="pip install 'inspectline[line]' (asyncua)")
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/inspectline/"
    cfg = plant(tmp_path, opcua={"endpoint": endpoint, "ack_timeout_s": 0.3})

    async def plc(n: int, slow_first: bool) -> list[dict]:
        """What a PLC does: wait for ResultReady, read the result, acknowledge its Sequence."""
        taken: list[dict] = []
        async with asyncua.Client(endpoint) as client:
            idx = await client.get_namespace_index("urn:inspectline")

            def node(name):
                return client.get_node(f"ns={idx};s=line-1.{name}")

            while len(taken) < n:
                if not await node("ResultReady").read_value():
                    await asyncio.sleep(0.01)
                    continue
                seq = await node("Sequence").read_value()
                if taken and taken[-1]["seq"] == seq:  # still ours until inspectline clears ResultReady
                    await asyncio.sleep(0.01)
                    continue
                taken.append(
                    {
                        "seq": seq,
                        "part_id": await node("PartId").read_value(),
                        "verdict": await node("Verdict").read_value(),
                        "reject": await node("Reject").read_value(),
                        "reason": await node("Reason").read_value(),
                    }
                )
                if slow_first and len(taken) == 1:
                    await asyncio.sleep(1.0)  # longer than ack_timeout_s: a failed delivery, then acknowledged
                await node("Acknowledge").write_value(asyncua.ua.Variant(seq, asyncua.ua.VariantType.UInt32))
        return taken

    results = LineResults(cfg)
    results.start()
    try:
        for i in range(1, 6):
            results.submit(part(i))
        taken = asyncio.run(asyncio.wait_for(plc(5, slow_first=True), 60))
        wait_until(lambda: results.backlog()[("line-1", "opcua")] == 0, what="the last acknowledge")
        failures = results.metrics.registry.get_sample_value(
            "inspect_output_delivery_failures_total", {"line": "line-1", "output": "opcua", "kind": "retry"}
        )
    finally:
        results.stop()
    assert [t["seq"] for t in taken] == [1, 2, 3, 4, 5]
    assert [t["part_id"] for t in taken] == ["P001", "P002", "P003", "P004", "P005"]
    assert [t["reject"] for t in taken] == [False, False, False, True, False]
    assert taken[3]["verdict"] == "DEFECTIVE" and taken[3]["reason"].startswith("DEFECTIVE in view top")
    assert failures >= 1

    again = LineResults(cfg)  # a service restart: the Sequence goes on from the last acknowledged one
    again.start()
    try:
        again.submit(part(6))
        taken = asyncio.run(asyncio.wait_for(plc(1, slow_first=False), 60))
    finally:
        again.stop()
    assert [(t["seq"], t["part_id"]) for t in taken] == [(6, "P006")]


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: answers from ``script`` first (503s, a 400), then 200; records what it took."""

    script: ClassVar[list[int]] = []
    taken: ClassVar[list[dict]] = []
    keys: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            self.taken.append(body)
            self.keys.append(self.headers["Idempotency-Key"])
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_webhook_retries_until_taken_and_records_a_refusal(tmp_path):
    Receiver.script, Receiver.taken, Receiver.keys = [503, 503, 200, 400], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = LineResults(plant(tmp_path, webhook={"url": f"http://127.0.0.1:{server.server_port}/parts"}))
    results.start()
    try:
        for i in range(1, 5):
            results.submit(part(i))
        wait_until(lambda: len(Receiver.taken) == 3, what="three verdicts taken")
        refusals = results.outbox.refusals("line-1")
    finally:
        results.stop()
        server.shutdown()
    assert [b["seq"] for b in Receiver.taken] == [1, 3, 4]
    assert Receiver.keys == ["line-1:1", "line-1:3", "line-1:4"]
    assert [(r["seq"], r["reason"].endswith("refused seq 2: HTTP 400")) for r in refusals] == [(2, True)]
