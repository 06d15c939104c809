"""The end-to-end demo behind ``make demo``.

1. train a quick model on ELPV (the ``demo`` profile: ResNet18 at 128 px, minutes on two CPU cores);
2. evaluate it on the test split, register it, and promote it when nothing is in production yet;
3. start the inspection service (``serve_config.yaml`` on a local Ray);
4. post the test split's cells to it as a line camera would, print verdicts and throughput;
5. shut the service down.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import typer

from inspectline.config import InspectConfig
from inspectline.data import CLASS_NAMES, Sample, load_samples, load_split_manifest
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, load_serve_config, resolve_paths, service_url, start_local_ray, stop_local_ray, wait_until_ready
from inspectline.training import run_training


def run_demo(cfg: InspectConfig, *, serve_config: Path = Path("serve_config.yaml"), frames: int = 200) -> None:
    started = time.perf_counter()
    typer.echo(f"[1/5] training {cfg.model.arch} at {cfg.data.image_size} px on {cfg.data.source} for up to {cfg.train.epochs} epochs")
    run = run_training(cfg, progress=True)
    m = run.evaluation.metrics
    typer.echo(
        f"[2/5] test split ({m['n']} cells): accuracy {m['accuracy']:.4f}, defect F1 {m['f1']:.4f}, "
        f"recall {m['recall']:.4f}, ROC-AUC {m['roc_auc']:.4f}, ECE {run.evaluation.ece_after:.4f}, "
        f"threshold {run.card.threshold:.3f}, temperature {run.card.temperature:.3f}"
    )
    registry = ModelRegistry(cfg.paths.registry)
    version = registry.register(run.checkpoint)
    if registry.production() is None:
        registry.promote(version.name, reason="first model (make demo)")
    typer.echo(f"      registered {version.name} in {registry.root} (production: {registry.production()}); report: {version.path / 'report' / 'report.md'}")

    config = resolve_paths(load_serve_config(serve_config), Path.cwd())
    for app in config["applications"]:
        app["args"]["registry"] = str(registry.root.resolve())
    url = service_url(config)
    typer.echo(f"[3/5] starting the inspection service at {url}")
    try:
        deploy(config, start_local_ray())
        ready = wait_until_ready(url, timeout_s=600)
        typer.echo(f"      ready, serving {ready['model_version']}")
        test = load_split_manifest(version.path / "splits.json", load_samples(cfg.data)).test[:frames]
        typer.echo(f"[4/5] posting {len(test)} test cells as camera 'demo-cam' on line 'demo-line'")
        _post_frames(url, test)
    finally:
        typer.echo("[5/5] shutting the service down")
        stop_local_ray()
    typer.echo(f"done in {time.perf_counter() - started:.0f} s")


def _post_frames(url: str, samples: list[Sample], concurrency: int = 8) -> None:
    def post(sample: Sample) -> tuple[Sample, dict, float]:
        t0 = time.perf_counter()
        response = client.post(
            f"{url}/v1/frames",
            content=sample.path.read_bytes(),
            headers={"Content-Type": "image/png"},
            params={"line_id": "demo-line", "camera_id": "demo-cam", "frame_id": Path(sample.key).stem, "part_id": Path(sample.key).stem},
        )
        response.raise_for_status()
        return sample, response.json(), (time.perf_counter() - t0) * 1000

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(post, samples))
        wall = time.perf_counter() - t0
    for sample, verdict, ms in results[:10]:
        typer.echo(
            f"      {verdict['frame_id']}: {verdict['verdict']:<9} p(defect)={verdict['defect_probability']:.3f} "
            f"confidence={verdict['confidence']:.3f} (labelled {CLASS_NAMES[sample.label]}, {ms:.0f} ms)"
        )
    counts = {v: sum(1 for _, r, _ in results if r["verdict"] == v) for v in ("OK", "DEFECTIVE", "UNSURE")}
    agree = sum(1 for s, r, _ in results if (r["verdict"] == "DEFECTIVE") == (s.label == 1)) / len(results)
    latencies = sorted(ms for _, _, ms in results)
    typer.echo(
        f"      {len(results)} frames in {wall:.1f} s = {len(results) / wall:.1f} frames/s with {concurrency} clients; "
        f"verdicts {counts}; agreement with labels {agree:.3f}; latency p50 {statistics.median(latencies):.0f} ms, "
        f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.0f} ms"
    )
