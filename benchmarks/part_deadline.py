"""Part-deadline benchmark: how many part verdicts reach the line within the deadline, at the line's rate.

    python benchmarks/part_deadline.py                                  # random-init ResNet18 @ 128 px
    python benchmarks/part_deadline.py --rates 1,2 --parts 60 --deadline-ms 1000 --drop-share 0.1
    python benchmarks/part_deadline.py --registry models --model production    # a trained model

The real service (``serve_config.yaml`` deployed on a local Ray) reads an ``inspect.yaml`` whose ``plant``
has one line with one station of three cameras (top, bottom, side; all required) and an MQTT output to
a Mosquitto this benchmark starts on a free loopback port. Three cameras, each its own HTTP client,
post one ELPV cell each per part with the same ``part_id``, open loop on a fixed schedule at ``--rates``
parts/s (so 3 x rate frames/s): a slow answer never delays the next part. A real MQTT subscriber
records when each part verdict arrives. Per part: first view sent -> published, last view sent ->
published and last view answered -> published; the share of parts published within ``deadline_ms`` of
their first view being sent. A last run at the first rate has the side camera skip its view for
``--drop-share`` of the parts, so those parts can only be decided at the deadline (NO_RESULT, or
DEFECTIVE when another view saw a defect). The service starts a part's deadline when its first view
reaches the line monitor (after judgement and the gateway's micro-batch), so first view sent -> NO_RESULT
is the deadline plus that delay. With random weights the inspectors' threshold is 0.999 (``--threshold``)
so views are OK and a part missing a view is NO_RESULT rather than DEFECTIVE. Writes
``benchmarks/results/part_deadline.json`` with the machine and its 1-minute load average before and
after, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result
from serve_throughput import random_init_registry

from inspectline.config import DataConfig
from inspectline.data import load_samples
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, load_serve_config, start_local_ray, stop_local_ray, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
LINE, STATION, CAMERAS = "line-bench", "final", ("top", "bottom", "side")
VERDICTS = ("OK", "DEFECTIVE", "UNSURE", "NO_RESULT")


@dataclass
class Part:
    """One part's three views as the cameras sent them, and its verdict as the line received it."""

    part_id: str
    cameras: tuple[str, ...]
    sent: dict[str, float] = field(default_factory=dict)  # camera -> perf_counter when its post started
    answered: dict[str, float] = field(default_factory=dict)  # camera -> perf_counter when it was answered
    status: dict[str, int] = field(default_factory=dict)
    published: float | None = None
    verdict: str | None = None
    service_seconds: float | None = None  # the service's own first view -> decision


class Broker:
    """A Mosquitto on a free loopback port, for as long as the benchmark runs."""

    def __init__(self, folder: Path):
        program = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if program is None:
            msg = "mosquitto not found (apt-get install mosquitto)"
            raise SystemExit(msg)
        self.port = _free_port()
        config = folder / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nuser {getpass.getuser()}\n"
        )
        self.log = folder / "mosquitto.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([program, "-c", str(config)], stdout=log, stderr=log)
        started = time.monotonic()
        while "Opening ipv4 listen socket" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() - started > 10:
                msg = f"mosquitto did not start: {self.log.read_text()}"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Subscriber:
    """The line controller's side: a real MQTT client noting when each part verdict arrives."""

    def __init__(self, port: int, topic: str):
        self.arrivals: dict[str, tuple[float, dict]] = {}  # part id -> (perf_counter, first message)
        self.duplicates = 0
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-plc-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            msg = f"could not subscribe to {topic} on port {port}"
            raise RuntimeError(msg)

    def _message(self, _client, _userdata, message) -> None:
        now = time.perf_counter()
        doc = json.loads(message.payload)
        with self._lock:
            if doc["part_id"] in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[doc["part_id"]] = (now, doc)

    def get(self, part_id: str) -> tuple[float, dict] | None:
        with self._lock:
            return self.arrivals.get(part_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, help="a trained model registry (default: a random-init one)")
    parser.add_argument("--model", default="production", help="registry reference, with --registry")
    parser.add_argument("--rates", default="1,2", help="comma-separated line rates, parts/s (3 frames per part)")
    parser.add_argument("--parts", type=int, default=60, help="parts per run")
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--drop-share", type=float, default=0.1, help="share of parts the side camera misses")
    parser.add_argument(
        "--threshold",
        type=float,
        help="the inspectors' threshold (default: 0.999 with random weights, so views are OK and a missing view "
        "decides NO_RESULT; the model's own with --registry)",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=8012)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.threshold is None and args.registry is None:
        args.threshold = 0.999
    load_before = os.getloadavg()[0]
    bodies = [s.path.read_bytes() for s in load_samples(DataConfig())[:64]]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        registry = _registry(args, workdir)
        broker = Broker(workdir)
        try:
            address = start_local_ray(num_cpus=os.cpu_count() or 1)
            deploy(_serve_config(args, _inspect_yaml(args, registry, broker.port, workdir)), address)
            url = f"http://127.0.0.1:{args.port}"
            ready = wait_until_ready(url, timeout_s=600)
            subscriber = Subscriber(broker.port, f"inspectline/{LINE}/parts")
            try:
                run = uuid.uuid4().hex[:8]
                wait_s = args.deadline_ms / 1000 + 30  # after the last post: a deadline, and a generous margin
                _run(url, bodies, subscriber, f"{run}-w", 1.0, 5, 0.0, args.seed, wait_s)  # load every replica
                phases = [(rate, 0.0) for rate in rates] + ([(rates[0], args.drop_share)] if args.drop_share else [])
                runs = []
                for i, (rate, drop) in enumerate(phases):
                    parts = _run(url, bodies, subscriber, f"{run}-{i}", rate, args.parts, drop, args.seed, wait_s)
                    runs.append(_summary(parts, rate, drop, args.deadline_ms))
                    print(_line(runs[-1]))
                duplicates = subscriber.duplicates
            finally:
                subscriber.close()
        finally:
            stop_local_ray()
            broker.stop()

    result = {
        "name": "part_deadline",
        "model": ready.get("model_version"),
        "weights": "trained" if args.registry else "random init ResNet18 @ 128 px (timing only)",
        "line": {"cameras": list(CAMERAS), "required": list(CAMERAS), "deadline_ms": args.deadline_ms},
        "output": "mqtt (Mosquitto on loopback, QoS 1)",
        "threshold": args.threshold,
        "replicas": args.replicas,
        "cpus_per_replica": args.cpus_per_replica,
        "parts_per_run": args.parts,
        "duplicate_messages": duplicates,
        "runs": runs,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "machine": machine_info(),
    }
    out = save_result("part_deadline", result)
    _table(result)
    print(f"wrote {out}")


def _registry(args: argparse.Namespace, workdir: Path) -> Path:
    if args.registry is None:
        torch.manual_seed(args.seed)
        return random_init_registry(workdir, "resnet18", 128).root
    ModelRegistry(args.registry).resolve(args.model)  # fail here, with the registry's message, not in a replica
    return args.registry.resolve()


def _inspect_yaml(args: argparse.Namespace, registry: Path, mqtt_port: int, workdir: Path) -> Path:
    """The service's inspect.yaml: this run's model, a throwaway store, and the benchmark's line."""
    station = {"name": STATION, "cameras": list(CAMERAS), "deadline_ms": args.deadline_ms}
    line = {"stations": [station], "outputs": {"mqtt": {"port": mqtt_port}}}
    doc = {
        "paths": {"registry": str(registry)},
        "store": {"database_url": f"sqlite:///{workdir / 'frames.db'}", "storage_url": str(workdir / "images")},
        "service": {"spool_dir": str(workdir / "spool")},
        "plant": {"outbox": str(workdir / "outbox.sqlite3"), "lines": {LINE: line}},
    }
    path = workdir / "inspect.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _serve_config(args: argparse.Namespace, inspect_yaml: Path) -> dict:
    config = load_serve_config(REPO / "serve_config.yaml")
    config["http_options"] = {"host": "127.0.0.1", "port": args.port}
    app = config["applications"][0]
    app["args"] = {"config": str(inspect_yaml)}
    for deployment in app["deployments"]:
        if deployment["name"] == "Inspector":
            deployment["num_replicas"] = args.replicas
            deployment["ray_actor_options"] = {"num_cpus": args.cpus_per_replica}
            deployment["user_config"]["threshold"] = args.threshold
    return config


def _run(
    url: str,
    bodies: list[bytes],
    subscriber: Subscriber,
    run: str,
    rate: float,
    n: int,
    drop_share: float,
    seed: int,
    wait_s: float,
) -> list[Part]:
    """Post ``n`` parts at ``rate`` parts/s, then wait until every verdict arrived or ``wait_s`` passed."""
    rng = random.Random(seed)
    parts = []
    for i in range(n):
        dropped = rng.random() < drop_share
        parts.append(Part(f"{run}-{i:04d}", CAMERAS[:-1] if dropped else CAMERAS))
    asyncio.run(_cameras(f"{url}/v1/frames", bodies, parts, rate))
    last_post = time.perf_counter()
    while time.perf_counter() - last_post < wait_s and any(subscriber.get(p.part_id) is None for p in parts):
        time.sleep(0.05)
    for p in parts:
        got = subscriber.get(p.part_id)
        if got is not None:
            p.published, doc = got
            p.verdict, p.service_seconds = doc["verdict"], doc.get("seconds")
    return parts


async def _cameras(url: str, bodies: list[bytes], parts: list[Part], rate: float) -> None:
    """Each camera its own client, posting its view of part i at start + i / rate whatever the answers do."""

    async def camera(name: str, k: int) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            posts = []
            for i, part in enumerate(parts):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                if name in part.cameras:
                    body = bodies[(3 * i + k) % len(bodies)]
                    posts.append(asyncio.create_task(post(client, name, part, body)))
            await asyncio.gather(*posts)

    async def post(client: httpx.AsyncClient, name: str, part: Part, body: bytes) -> None:
        part.sent[name] = time.perf_counter()
        params = {"line_id": LINE, "camera_id": name, "part_id": part.part_id, "frame_id": f"{part.part_id}-{name}"}
        try:
            r = await client.post(url, content=body, headers={"Content-Type": "image/png"}, params=params)
            part.status[name] = r.status_code
        except httpx.HTTPError:
            part.status[name] = 0
        part.answered[name] = time.perf_counter()

    start = time.perf_counter() + 0.5
    await asyncio.gather(*(camera(name, k) for k, name in enumerate(CAMERAS)))


def _summary(parts: list[Part], rate: float, drop_share: float, deadline_ms: float) -> dict:
    done = [p for p in parts if p.published is not None]
    first = [(p.published - min(p.sent.values())) * 1000 for p in done]
    last_sent = [(p.published - max(p.sent.values())) * 1000 for p in done]
    last_answer = [(p.published - max(p.answered.values())) * 1000 for p in done]
    complete = [p for p in done if len(p.cameras) == len(CAMERAS)]
    dropped = [p for p in done if len(p.cameras) < len(CAMERAS)]
    errors = sum(1 for p in parts for s in p.status.values() if s != 200)
    return {
        "rate_parts_per_s": rate,
        "frames_per_s": rate * len(CAMERAS),
        "drop_share": drop_share,
        "parts": len(parts),
        "published": len(done),
        "never_published": len(parts) - len(done),
        "frame_errors": errors,
        "verdicts": {v: sum(1 for p in done if p.verdict == v) for v in VERDICTS},
        "within_deadline_share": sum(1 for ms in first if ms <= deadline_ms) / len(parts),
        "within_deadline_share_all_views": (
            sum(1 for p in complete if (p.published - min(p.sent.values())) * 1000 <= deadline_ms) / len(complete)
            if complete
            else None
        ),
        "first_view_to_published_ms": _percentiles(first),
        "last_view_sent_to_published_ms": _percentiles(last_sent),
        "last_view_answered_to_published_ms": _percentiles(last_answer),
        "view_answer_ms": _percentiles([(p.answered[c] - p.sent[c]) * 1000 for p in parts for c in p.answered]),
        "service_first_view_to_decision_ms": _percentiles(
            [p.service_seconds * 1000 for p in done if p.service_seconds]
        ),
        "missing_view_parts": len([p for p in parts if len(p.cameras) < len(CAMERAS)]),
        "missing_view_verdicts": {v: sum(1 for p in dropped if p.verdict == v) for v in VERDICTS},
        "missing_view_first_view_to_published_ms": _percentiles(
            [(p.published - min(p.sent.values())) * 1000 for p in dropped]
        ),
    }


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)} | {"max": max(values), "n": len(values)}


def _fmt(p: dict | None) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f} / {p['p99']:.0f}" if p else "-"


def _line(r: dict) -> str:
    return (
        f"{r['rate_parts_per_s']:g} parts/s, drop {r['drop_share']:.0%}: {r['published']}/{r['parts']} published, "
        f"{r['within_deadline_share']:.1%} within the deadline, first view -> published p50/p95/p99 "
        f"{_fmt(r['first_view_to_published_ms'])} ms"
    )


def _table(r: dict) -> None:
    m = r["machine"]
    load = r["load_average_1m"]
    print(
        f"\nPart deadline {r['line']['deadline_ms']:.0f} ms, 3 cameras, MQTT, {r['model']} on {m['cpu']} "
        f"({m['cpu_cores']} cores), load average {load['before']:.2f} -> {load['after']:.2f}"
    )
    print(
        "| parts/s (frames/s) | side view missing | published / parts | within deadline | "
        "first view -> published p50 / p95 / p99 ms | last view sent -> published | last view answered -> published "
        "| verdicts OK / DEF / UNSURE / NO_RESULT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in r["runs"]:
        v = run["verdicts"]
        print(
            f"| {run['rate_parts_per_s']:g} ({run['frames_per_s']:g}) | {run['missing_view_parts']} "
            f"| {run['published']} / {run['parts']} | {run['within_deadline_share']:.1%} "
            f"| {_fmt(run['first_view_to_published_ms'])} | {_fmt(run['last_view_sent_to_published_ms'])} "
            f"| {_fmt(run['last_view_answered_to_published_ms'])} "
            f"| {v['OK']} / {v['DEFECTIVE']} / {v['UNSURE']} / {v['NO_RESULT']} |"
        )
    for run in r["runs"]:
        if run["missing_view_parts"]:
            print(
                f"\nparts missing the side view ({run['missing_view_parts']}): first view -> published "
                f"p50 / p95 / p99 {_fmt(run['missing_view_first_view_to_published_ms'])} ms, "
                f"verdicts {run['missing_view_verdicts']}"
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
