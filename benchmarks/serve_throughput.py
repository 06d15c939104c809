"""Serving benchmark: raw Predictor vs the served application, on the same machine, in one run.

    python benchmarks/serve_throughput.py --registry models --model production   # the demo model
    python benchmarks/serve_throughput.py --arch resnet50 --image-size 224       # ResNet50 at 224 px

(a) raw: ``Predictor.predict`` on decoded frames in batches of ``--max-batch-size`` with flip TTA,
    in this process, torch using every core;
(b) served: HTTP posts of the same PNG frames (ELPV cells) to ``serve_config.yaml`` deployed with
    ``serve run``, closed loop at saturation, from a load generator in its own process;
(c) latency p50/p95/p99 at open-loop rates of 50 % and 80 % of (b), and of a single frame on an
    idle service.

``--arch`` builds a randomly initialised model of that architecture: throughput does not depend on
the weights, and no ImageNet or trained ResNet50 is needed to measure it. Writes
``benchmarks/results/serve_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import run_in_process
from machine import machine_info, save_result

from inspectline.config import DataConfig
from inspectline.data import Preprocessing, load_samples
from inspectline.imaging import decode_image
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, load_serve_config, start_local_ray, stop_local_ray, wait_until_ready

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--model", default="production", help="a registry reference (ignored with --arch)")
    parser.add_argument(
        "--arch",
        choices=["resnet18", "resnet34", "resnet50"],
        help="benchmark a random-init model of this architecture",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--name", help="result name (default: the arch and size, or 'demo')")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="closed-loop clients (default: 2 x batch x replicas)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    concurrency = args.concurrency or 2 * args.max_batch_size * args.replicas

    with tempfile.TemporaryDirectory() as tmp:
        registry, checkpoint, name = _model(args, Path(tmp))
        bodies = [s.path.read_bytes() for s in load_samples(DataConfig())[:64]]
        frames = [decode_image(b) for b in bodies]

        torch.set_num_threads(cores)
        predictor = Predictor.load(checkpoint)
        card = predictor.card
        raw = _raw_throughput(predictor, frames, args.max_batch_size, args.seconds)
        del predictor
        print(f"raw Predictor: {raw:.1f} frames/s (batch {args.max_batch_size}, flip TTA, {cores} threads)")

        address = start_local_ray(num_cpus=cores)
        try:
            deploy(_serve_config(args, registry.root, Path(tmp)), address)
            url = f"http://127.0.0.1:{args.port}"
            ready = wait_until_ready(url, timeout_s=600)
            frames_url = f"{url}/v1/frames"
            run_in_process("closed", frames_url, bodies, concurrency=concurrency, seconds=5)  # warm every replica
            closed = run_in_process("closed", frames_url, bodies, concurrency=concurrency, seconds=args.seconds)
            print(f"served: {closed.throughput:.1f} frames/s closed loop with {concurrency} clients")
            idle = _idle_latency(frames_url, bodies, args.seconds)
            open_loop = {}
            for share in (0.5, 0.8):
                rate = share * closed.throughput
                res = run_in_process("open", frames_url, bodies, rate=rate, seconds=args.seconds)
                open_loop[f"{int(share * 100)}%"] = {
                    "rate_per_s": rate,
                    "ok": res.ok,
                    "errors": res.errors,
                    "p50_ms": res.percentile(50),
                    "p95_ms": res.percentile(95),
                    "p99_ms": res.percentile(99),
                    "loadgen_cpu_share": res.cpu_seconds / (res.seconds * cores),
                }
                print(
                    f"open loop {share:.0%}: {rate:.1f}/s p50 {res.percentile(50):.1f} ms p99 "
                    f"{res.percentile(99):.1f} ms"
                )
        finally:
            stop_local_ray()

    result = {
        "name": name,
        "model": ready.get("model_version"),
        "arch": card.arch,
        "image_size": card.preprocessing.image_size,
        "weights": "random init (throughput only)" if args.arch else "trained",
        "tta_views": list(card.tta_views),
        "replicas": args.replicas,
        "cpus_per_replica": args.cpus_per_replica,
        "max_batch_size": args.max_batch_size,
        "batch_wait_s": args.batch_wait_s,
        "concurrency": concurrency,
        "seconds": args.seconds,
        "raw_frames_per_s": raw,
        "served_frames_per_s": closed.throughput,
        "served_over_raw": closed.throughput / raw,
        "served_errors": closed.errors,
        "served_p50_ms": closed.percentile(50),
        "served_p99_ms": closed.percentile(99),
        "loadgen_cpu_share_at_saturation": closed.cpu_seconds / (closed.seconds * cores),
        "idle_single_frame_ms": idle,
        "open_loop": open_loop,
        "p99_at_50pct_over_idle": open_loop["50%"]["p99_ms"] / idle["median_ms"],
        "targets": {"served_over_raw": ">= 0.90", "p99_at_50pct_over_idle": "<= 2.5"},
        "machine": machine_info(),
    }
    out = save_result(f"serve_{name}", result)
    _table(result)
    print(f"wrote {out}")


def _model(args: argparse.Namespace, tmp: Path) -> tuple[ModelRegistry, Path, str]:
    if args.arch is None:
        registry = ModelRegistry(args.registry)
        checkpoint = registry.resolve(args.model)
        return registry, checkpoint, args.name or "demo"
    registry = random_init_registry(tmp, args.arch, args.image_size)
    return registry, registry.resolve("production"), args.name or f"{args.arch}_{args.image_size}"


def random_init_registry(folder: Path, arch: str, image_size: int) -> ModelRegistry:
    """``folder/models`` holding one promoted, randomly initialised version: for speed, never for verdicts."""
    model = build_model(arch, in_channels=1)
    card = ModelCard(
        arch=arch,
        class_names=("ok", "defective"),
        head_dims=(512, 256),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=image_size, color_mode="gray", mean=(0.5,), std=(0.2,)),
    )
    save_checkpoint(folder / "run" / "model.pt", model, card)
    registry = ModelRegistry(folder / "models")
    version = registry.register(folder / "run" / "model.pt")
    registry.promote(version.name)
    return registry


def _raw_throughput(predictor: Predictor, frames: list[np.ndarray], batch: int, seconds: float) -> float:
    for i in range(3):
        predictor.predict(frames[i * batch : (i + 1) * batch])
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = [frames[(i + k) % len(frames)] for k in range(batch)]
        predictor.predict(chunk)
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def _idle_latency(url: str, bodies: list[bytes], seconds: float) -> dict:
    """A trickle of 2 frames/s from the same load generator: the latency of a frame on an idle service."""
    res = run_in_process("open", url, bodies, rate=2.0, seconds=max(seconds, 15.0))
    return {"median_ms": res.percentile(50), "p99_ms": res.percentile(99), "frames": res.ok}


def _serve_config(args: argparse.Namespace, registry: Path, workdir: Path) -> dict:
    """serve_config.yaml with this run's model, a throwaway frame store and the benchmark's replica settings."""
    config = load_serve_config(REPO / "serve_config.yaml")
    config["http_options"] = {"host": "127.0.0.1", "port": args.port}
    app = config["applications"][0]
    store = {
        **app["args"]["store"],
        "database_url": f"sqlite:///{workdir / 'frames.db'}",
        "storage_url": str(workdir / "images"),
    }
    app["args"] = {"registry": str(registry.resolve()), "store": store, "spool_dir": str(workdir / "spool")}
    for deployment in app["deployments"]:
        if deployment["name"] == "Inspector":
            deployment["num_replicas"] = args.replicas
            deployment["ray_actor_options"] = {"num_cpus": args.cpus_per_replica}
            deployment["user_config"].update(
                {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s}
            )
        if deployment["name"] == "Gateway":
            deployment["user_config"]["max_inflight"] = 4096  # measure the service, not its refusal path
    return config


def _table(r: dict) -> None:
    print(f"\nServing benchmark: {r['name']} on {r['machine']['cpu']} ({r['machine']['cpu_cores']} cores)")
    print(f"| {'measure':<44} | {'value':>12} | target |")
    print(f"|{'-' * 46}|{'-' * 14}|--------|")
    rows = [
        ("raw Predictor, frames/s (flip TTA)", f"{r['raw_frames_per_s']:.1f}", ""),
        (f"served, frames/s ({r['concurrency']} clients, closed loop)", f"{r['served_frames_per_s']:.1f}", ""),
        ("served / raw", f"{r['served_over_raw']:.3f}", ">= 0.90"),
        ("idle single frame, median ms", f"{r['idle_single_frame_ms']['median_ms']:.1f}", ""),
    ]
    for key, v in r["open_loop"].items():
        rows.append(
            (
                f"{key} load ({v['rate_per_s']:.1f}/s): p50 / p95 / p99 ms",
                f"{v['p50_ms']:.0f}/{v['p95_ms']:.0f}/{v['p99_ms']:.0f}",
                "",
            )
        )
    rows += [
        ("p99 at 50 % load / idle single frame", f"{r['p99_at_50pct_over_idle']:.2f}", "<= 2.5"),
        ("load generator share of the machine at saturation", f"{r['loadgen_cpu_share_at_saturation']:.1%}", ""),
    ]
    for label, value, target in rows:
        print(f"| {label:<44} | {value:>12} | {target:<6} |")


if __name__ == "__main__":
    main()
