"""ELPV accuracy benchmark: train a named recipe from scratch, evaluate on the 25 % test split.

    python benchmarks/elpv_accuracy.py --recipe elpv-budget        # 2 CPU cores, about an hour
    python benchmarks/elpv_accuracy.py --recipe elpv-resnet50      # the full recipe, on a GPU

Writes ``benchmarks/results/elpv_<recipe>.json`` (binary accuracy, F1, ROC-AUC, the breakdown by
annotated defect probability and cell type, wall time, machine) and prints a table next to the
published reference on the same 75/25 protocol: Deitsch et al. 2019 (Solar Energy), VGG19
pretrained on ImageNet, 88.42 % binary accuracy, ROC-AUC 0.944. Our recipes train from scratch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result

from inspectline.cli import profile_path
from inspectline.config import load_config
from inspectline.training import run_training

REFERENCE = {"name": "Deitsch et al. 2019, VGG19 (ImageNet-pretrained)", "accuracy": 0.8842, "roc_auc": 0.944}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="elpv-budget", help="a profile in inspectline/profiles")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the run folder goes")
    args = parser.parse_args()

    cfg = load_config(profile_path(args.recipe), [f"paths.runs={args.runs}", *args.overrides])
    started = time.perf_counter()
    run = run_training(cfg, progress=True)
    wall = time.perf_counter() - started
    ev = run.evaluation
    m = ev.metrics
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "protocol": "ELPV, 25 % stratified test split (by label and cell type), defective = probability >= 0.5",
        "test_frames": m["n"],
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "f1": m["f1"],
        "precision": m["precision"],
        "recall": m["recall"],
        "roc_auc": m["roc_auc"],
        "pr_auc": m["pr_auc"],
        "ece": ev.ece_after,
        "threshold": run.card.threshold,
        "temperature": run.card.temperature,
        "breakdown": ev.breakdown.get("cell_type x defect_probability", []),
        "epochs_run": run.fit.epochs_run,
        "best_epoch": run.fit.best_epoch,
        "stop_reason": run.fit.stop_reason,
        "train_seconds": run.fit.seconds,
        "wall_seconds": wall,
        "cpu_latency_ms": ev.latency_ms,
        "config": cfg.model_dump(mode="json"),
        "run_dir": str(run.run_dir),
        "reference": REFERENCE,
        "machine": machine_info(),
    }
    out = save_result(f"elpv_{args.recipe}", result)
    print(
        f"\nELPV test split ({m['n']} cells), recipe {args.recipe}: {cfg.model.arch} @ {cfg.data.image_size} px, "
        f"{run.fit.epochs_run} epochs, {wall / 60:.1f} min on {result['machine']['gpu'] or result['machine']['cpu']}"
    )
    print(f"| {'model':<52} | accuracy | ROC-AUC | F1     |")
    print(f"|{'-' * 54}|----------|---------|--------|")
    print(
        f"| {'inspectline ' + args.recipe + ' (from scratch)':<52} | {m['accuracy']:.4f}   | "
        f"{m['roc_auc']:.4f}  | {m['f1']:.4f} |"
    )
    print(f"| {REFERENCE['name']:<52} | {REFERENCE['accuracy']:.4f}   | {REFERENCE['roc_auc']:.4f}  |  n/a   |")
    print("\nBy annotated defect probability and cell type (share flagged DEFECTIVE, accuracy):")
    for row in result["breakdown"]:
        print(
            f"  {row['cell_type']:<5} p={float(row['defect_probability']):.2f}  n={row['n']:<4} flagged "
            f"{row['flagged_share']:.3f}  accuracy {row['accuracy']:.3f}"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
