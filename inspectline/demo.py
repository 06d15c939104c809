"""The end-to-end demo behind ``make demo``.

1. train a quick model on ELPV (the ``demo`` profile: ResNet18 at a quarter of the width, 192 px, minutes on
   two CPU cores), and print its test numbers at the threshold it ships with (max F1, the profile's
   policy) and at the 0.95 target recall the inspection profiles ship with;
2. evaluate it on the test split, register it, and promote it when nothing is in production yet;
3. export it for this CPU (OpenVINO INT8, accuracy-controlled, and OpenVINO at the CPU's fastest
   floating-point precision, falling back to fp32 when a half-precision export is refused), each checked
   for parity with the checkpoint; one below its bound is refused and said so;
4. start the inspection service (``serve_config.yaml`` on a local Ray), whose replicas run the
   fastest export that passed parity (else the checkpoint in torch), and say which and why;
5. replay the test split's cells to it through the replay camera adapter, as a line camera would,
   and print verdicts, agreement with the labels and throughput;
6. shut the service down.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import typer
import yaml

from inspectline.camera_adapters.replay import ReplaySettings
from inspectline.camera_adapters.runner import AdapterSettings, run_camera
from inspectline.camera_adapters.source import safe_id
from inspectline.camera_adapters.uploader import UploadSettings
from inspectline.card import backbone_name
from inspectline.config import DataConfig, InspectConfig
from inspectline.data import CLASS_NAMES, Sample, load_samples, load_split_manifest
from inspectline.errors import EngineUnavailableError, ParityError
from inspectline.export import ExportRequest, export_version
from inspectline.hardware import cpu_capabilities
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import (
    deploy,
    load_serve_config,
    resolve_paths,
    service_url,
    start_local_ray,
    stop_local_ray,
    wait_until_ready,
)
from inspectline.serving.ingress import choose_ingress
from inspectline.training import run_training


def run_demo(cfg: InspectConfig, *, serve_config: Path = Path("serve_config.yaml"), frames: int = 200) -> None:
    started = time.perf_counter()
    typer.echo(
        f"[1/6] training {backbone_name(cfg.model.arch, cfg.model.width)} at {cfg.data.image_size} px on "
        f"{cfg.data.source} for up to {cfg.train.epochs} epochs"
    )
    run = run_training(cfg, progress=True)
    m = run.evaluation.metrics
    four = run.evaluation.four_class
    typer.echo(
        f"[2/6] test split ({m['n']} cells): accuracy {m['accuracy']:.4f}, defect F1 {m['f1']:.4f}, "
        f"recall {m['recall']:.4f}, ROC-AUC {m['roc_auc']:.4f}, ECE {run.evaluation.ece_after:.4f}, "
        f"threshold {run.card.threshold:.3f} ({run.card.threshold_policy}), temperature {run.card.temperature:.3f}"
        + (f", 4-class accuracy {four['accuracy']:.4f}" if four else "")
    )
    for row in run.evaluation.operating_points[1:]:
        t = row["measured"]
        typer.echo(
            f"      {row['basis']}: threshold {t['threshold']:.3f}, accuracy {t['accuracy']:.4f}, recall "
            f"{t['recall']:.4f}, precision {t['precision'] or 0:.4f}, false-reject rate {t['false_reject_rate']:.4f}, "
            f"escapes per 10,000 parts {t['escapes_per_10k']:.0f}"
        )
    registry = ModelRegistry(cfg.paths.registry)
    version = registry.register(run.checkpoint)
    if registry.production() is None:
        registry.promote(version.name, reason="first model (make demo)", actor="make demo")
    typer.echo(
        f"      registered {version.name} in {registry.root} (production: {registry.production()}); "
        f"report: {version.path / 'report' / 'report.md'}"
    )

    _export(registry, version.name)

    config = service_config(cfg, serve_config)
    url = service_url(config)
    ingress = choose_ingress("auto", os.environ)
    typer.echo(f"[4/6] starting the inspection service at {url}; {ingress.describe()}")
    try:
        deploy(config, start_local_ray(ingress=ingress))
        ready = wait_until_ready(url, timeout_s=600)
        engine = httpx.get(f"{url}/v1/model", timeout=30).json().get("engine") or {}
        typer.echo(
            f"      ready, serving {ready['model_version']} on {engine.get('engine')} {engine.get('precision')}: "
            f"{engine.get('reason')}"
        )
        test = load_split_manifest(version.path / "splits.json", load_samples(cfg.data)).test[:frames]
        _replay(url, test, Path(cfg.paths.runs) / "demo")
    finally:
        typer.echo("[6/6] shutting the service down")
        stop_local_ray()
    typer.echo(f"done in {time.perf_counter() - started:.0f} s")


def service_config(cfg: InspectConfig, serve_config: Path) -> dict:
    """``serve_config`` with its application reading the demo's own configuration, so the service finds the
    registry, store and spool the demo just used (written to ``<runs>/demo/inspect.yaml``)."""
    path = (Path(cfg.paths.runs) / "demo" / "inspect.yaml").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    config = resolve_paths(load_serve_config(serve_config), Path.cwd())
    for app in config["applications"]:
        app["args"] = {"config": str(path), "base": str(Path.cwd())}
    return config


def _export(registry: ModelRegistry, version: str) -> None:
    """Export ``version`` in the precisions that can be fastest on this CPU; the service picks among those that pass.

    INT8 is tried on its own. The floating-point exports are tried fastest first and stop at the first that
    passes: on a CPU with native bf16, OpenVINO runs an fp16 export in bf16, and when a model's cells sit
    close enough to its threshold for that to be refused, the fp32 export (which judges like the checkpoint
    and still runs faster than torch) is what the service gets instead of the checkpoint in torch.
    """
    caps = cpu_capabilities()
    # OpenVINO's default precision runs bf16 on CPUs with native bf16 and fp32 elsewhere.
    floating = ("fp16", "fp32") if caps.bf16 else ("fp32",)
    typer.echo(f"[3/6] exporting {version} for this CPU ({caps.describe()}), each checked against the checkpoint")
    for chain in (("int8",), floating):
        for precision in chain:
            request = ExportRequest(
                format="openvino", precision=precision, max_drop=0.01 if precision == "int8" else None
            )
            try:
                record = export_version(registry, version, request, actor="make demo").record
            except EngineUnavailableError as exc:
                typer.echo(f"      no exports: {exc}; the service runs the checkpoint in torch")
                return
            except ParityError as exc:
                typer.echo(f"      openvino {precision}: {str(exc).splitlines()[0]}")
                continue
            test = record.parity.get("test", {})
            typer.echo(
                f"      openvino {precision}: agreement {test.get('agreement', 0):.2%} with the checkpoint on the test "
                f"split, {record.images_per_s or 0:.1f} images/s = {record.speedup or 0:.2f}× torch fp32 here"
            )
            break


def _replay(url: str, cells: list[Sample], workdir: Path, fps: float = 25.0) -> None:
    """Play the cells through the replay camera adapter and summarise its results log."""
    stamp = datetime.now(timezone.utc).strftime("%H%M%S")
    camera = f"demo-cam-{stamp}"  # a fresh camera per run: the store remembers earlier runs' frame ids
    # A manifest of short relative paths (links to the dataset's files) gives readable frame ids.
    folder = workdir / f"cells-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for cell in cells:
        link = folder / cell.path.name
        link.symlink_to(cell.path.resolve())
        entries.append((link.name, CLASS_NAMES[cell.label]))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *entries])
    labels = {safe_id(cell.path.name): cell.label for cell in cells}
    results = workdir / f"results-{stamp}.jsonl"
    typer.echo(f"[5/6] replaying {len(cells)} test cells at {fps:g} frames/s as camera {camera} on line demo-line")
    summary = run_camera(
        ReplaySettings(data=DataConfig(source="manifest", path=manifest), fps=fps),
        AdapterSettings(
            line_id="demo-line",
            camera_id=camera,
            upload=UploadSettings(url=url),
            spool_dir=workdir / "spool" / camera,
            results_log=results,
        ),
    )
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for row in [r for r in rows if "verdict" in r][:8]:
        typer.echo(
            f"      {row['frame_id']}: {row['verdict']:<9} p(defect)={row['defect_probability']:.3f} "
            f"confidence={row['confidence']:.3f} (labelled {CLASS_NAMES[labels[row['frame_id']]]})"
        )
    counts = {v: sum(r.get("verdict") == v for r in rows) for v in ("OK", "DEFECTIVE", "UNSURE")}
    agree = sum((r.get("verdict") == "DEFECTIVE") == (labels[r["frame_id"]] == 1) for r in rows) / max(len(rows), 1)
    latencies = [r["latency_ms"] for r in rows if r.get("latency_ms") is not None]
    typer.echo(
        f"      {summary.judged} frames judged in {summary.seconds:.1f} s "
        f"({summary.judged / max(summary.seconds, 1e-9):.1f} frames/s at "
        f"{fps:g} offered), {summary.retries} retries, {summary.dropped} dropped; verdicts {counts}; "
        f"agreement with labels {agree:.3f}; "
        f"service latency p50 {statistics.median(latencies) if latencies else float('nan'):.0f} ms; "
        f"results log {results}"
    )
