"""The end-to-end demo behind ``make demo``: train a quick model on ELPV, evaluate, register, promote.

It uses the ``demo`` profile (ResNet18 at 128 px, a few minutes on two CPU cores) and prints where the
evaluation report is. The new version is promoted to production when none is in production yet, so
the service can serve it.
"""

from __future__ import annotations

import time

import typer

from inspectline.config import InspectConfig
from inspectline.registry import ModelRegistry
from inspectline.training import run_training


def run_demo(cfg: InspectConfig) -> None:
    started = time.perf_counter()
    typer.echo(f"[1/3] training {cfg.model.arch} at {cfg.data.image_size} px on {cfg.data.source} for up to {cfg.train.epochs} epochs")
    run = run_training(cfg, progress=True)
    m = run.evaluation.metrics
    typer.echo(
        f"[2/3] test split ({m['n']} cells): accuracy {m['accuracy']:.4f}, defect F1 {m['f1']:.4f}, "
        f"recall {m['recall']:.4f}, ROC-AUC {m['roc_auc']:.4f}, ECE {run.evaluation.ece_after:.4f}, "
        f"threshold {run.card.threshold:.3f}, temperature {run.card.temperature:.3f}"
    )
    registry = ModelRegistry(cfg.paths.registry)
    version = registry.register(run.checkpoint)
    promoted = registry.production() is None
    if promoted:
        registry.promote(version.name, reason="first model (make demo)")
    typer.echo(f"[3/3] registered {version.name} in {registry.root}" + (" and promoted it to production" if promoted else ""))
    typer.echo(f"report: {version.path / 'report' / 'report.md'}  ({time.perf_counter() - started:.0f} s in all)")
