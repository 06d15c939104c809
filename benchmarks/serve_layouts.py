"""Which deployment should judge frames: Inspector replicas behind the Gateway, or the Gateway replicas themselves?

    python -m benchmarks.serve_layouts --registry models --model production [--rounds 3] [--seconds 15] [--name layouts]

Both layouts run on one local Ray, redeployed in turn in ABBA order (inspector, gateway, gateway,
inspector, ...) so that a slow drift of the machine falls on both alike. Each turn: the app from
``serve_config.yaml`` (``judge: inspector``: 2 Inspector replicas x 1 CPU behind one Gateway) or from
``deploy/serve_config.gateway-judges.yaml`` (``judge: gateway``: 2 Gateway replicas x 1 CPU that decode
and judge their own frames, one process hop fewer), the same model, engine and batching; 5 s of warm-up,
then single posts and batch posts of 8 at saturation (closed loop, the load generator in its own
process), with every service process's CPU seconds per frame served, as ``serve_throughput.py`` counts them.

Writes ``benchmarks/results/serve_<name>.json`` (default ``serve_layouts.json``: each turn, and the
medians per layout) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import run_in_process
from machine import machine_info, save_result
from serve_throughput import _cpu_flags, _saturate, _serve_config

from inspectline.config import DataConfig
from inspectline.data import load_samples
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, start_local_ray, stop_local_ray
from inspectline.serving.ingress import choose_ingress

LAYOUTS = ("inspector", "gateway")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--model", default="production", help="a registry reference")
    parser.add_argument("--rounds", type=int, default=3, help="ABBA pairs: each layout runs this many times")
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured closed loop")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--name", default="layouts", help="the result file: benchmarks/results/serve_NAME.json")
    args = parser.parse_args()
    registry = ModelRegistry(args.registry)
    version = registry.resolve(args.model).parent.name
    card = registry.get(version).card
    bodies = [s.path.read_bytes() for s in load_samples(DataConfig())[:64]]
    order = [LAYOUTS[(i + i // 2) % 2] for i in range(2 * args.rounds)]  # A B B A A B ...
    cores = os.cpu_count() or 1
    turns = []
    with tempfile.TemporaryDirectory() as tmp:
        address = start_local_ray(num_cpus=cores, ingress=choose_ingress("auto", dict(os.environ)))
        try:
            for n, judge in enumerate(order):
                turns.append(_turn(args, judge, version, bodies, address, Path(tmp) / f"turn-{n}"))
                print(_row(turns[-1]), flush=True)
        finally:
            stop_local_ray()
    keys = ("single_frames_per_s", "single_cpu_ms_per_frame", "single_cores_used")
    keys += ("batch_frames_per_s", "batch_cpu_ms_per_frame", "batch_cores_used")
    medians = {
        judge: {k: statistics.median(t[k] for t in turns if t["judge"] == judge) for k in keys} for judge in LAYOUTS
    }
    result = {
        "model": version,
        "arch": card.arch,
        "image_size": card.preprocessing.image_size,
        "tta_views": list(card.tta_views),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "order": order,
        "turns": turns,
        "medians": medians,
        "gateway_over_inspector": {k: medians["gateway"][k] / medians["inspector"][k] for k in keys},
        "machine": machine_info() | {"cpu_flags": _cpu_flags()},
    }
    out = save_result(f"serve_{args.name}", result)
    print(
        f"\n| layout (median of {args.rounds}) | single f/s | CPU ms/frame | cores | batch f/s | CPU ms/frame | cores |"
    )
    print("|---|---|---|---|---|---|---|")
    for judge in LAYOUTS:
        m = medians[judge]
        print(
            f"| {judge} | {m['single_frames_per_s']:.1f} | {m['single_cpu_ms_per_frame']:.1f} | "
            f"{m['single_cores_used']:.2f} | {m['batch_frames_per_s']:.1f} | {m['batch_cpu_ms_per_frame']:.1f} | "
            f"{m['batch_cores_used']:.2f} |"
        )
    print(f"wrote {out}")


def _turn(args: argparse.Namespace, judge: str, version: str, bodies: list[bytes], address: str, work: Path) -> dict:
    work.mkdir(parents=True)
    deploy(_serve_config(layout_settings(args.port, judge), args.registry, version, work), address)
    url = f"http://127.0.0.1:{args.port}"
    _wait_for_layout(url, judge)
    run_in_process("closed", f"{url}/v1/frames", bodies, concurrency=32, seconds=5)  # warm every replica
    single = _saturate(f"{url}/v1/frames", bodies, concurrency=32, seconds=args.seconds)
    batch = _saturate(f"{url}/v1/frames/batch", bodies, concurrency=4, seconds=args.seconds, frames_per_post=8)
    return {
        "judge": judge,
        "engine": httpx.get(f"{url}/v1/model", timeout=30).json()["engine"],
        "single_frames_per_s": single.result.throughput,
        "single_cpu_ms_per_frame": single.cpu_ms_per_frame,
        "single_cores_used": single.cores_used,
        "single_errors": single.result.errors,
        "single_cpu_ms_by_process": single.by_process_ms_per_frame,
        "batch_frames_per_s": batch.result.throughput,
        "batch_cpu_ms_per_frame": batch.cpu_ms_per_frame,
        "batch_cores_used": batch.cores_used,
        "batch_errors": batch.result.errors,
        "batch_cpu_ms_by_process": batch.by_process_ms_per_frame,
    }


def layout_settings(port: int, judge: str) -> argparse.Namespace:
    """``serve_throughput``'s service settings for one layout: 2 judging replicas x 1 CPU, batches of 8."""
    return argparse.Namespace(
        port=port,
        replicas=2,
        cpus_per_replica=1.0,
        max_batch_size=8,
        batch_wait_s=0.005,
        engine="auto",
        precision="auto",
        gateway=[],
        judge=judge,
    )


def _wait_for_layout(url: str, judge: str, timeout_s: float = 600) -> None:
    """Ready, and running the layout just deployed (not the one it replaces)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            app = serve.status().applications["inspectline"]
            ready = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            if ready and app.status == "RUNNING" and ("Inspector" in app.deployments) == (judge == "inspector"):
                return
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(1)
    msg = f"the {judge} layout was not running within {timeout_s:.0f} s"
    raise RuntimeError(msg)


def _row(t: dict) -> str:
    return (
        f"{t['judge']:<9} single {t['single_frames_per_s']:.1f} f/s, {t['single_cpu_ms_per_frame']:.1f} ms CPU/frame, "
        f"{t['single_cores_used']:.2f} cores | batch {t['batch_frames_per_s']:.1f} f/s, "
        f"{t['batch_cpu_ms_per_frame']:.1f} ms, {t['batch_cores_used']:.2f} cores"
    )


if __name__ == "__main__":
    main()
