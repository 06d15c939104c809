"""Ablation of the training recipe on ELPV: what each regularisation lever does to a from-scratch ResNet18.

    python benchmarks/elpv_ablation.py --list                       # the variants and their overrides
    python benchmarks/elpv_ablation.py base ema mixup               # run these (each a full training run)
    python benchmarks/elpv_ablation.py --all --set data.image_size=96
    python benchmarks/elpv_ablation.py --table                      # the README's ablation table

Every variant is the ``base`` recipe (the ``elpv-cpu`` profile with its levers off: the ``light``
augmentation preset, no mixup, no label smoothing, weight decay 1e-4, head dropout 0.2/0.1/0, no
weight averaging, accuracy at the max-F1 threshold) with *one* lever turned on, or for
``resolution-*`` one value changed, at a short fixed schedule (``--set`` changes it for all). Each
writes ``results/elpv_ablation_<variant>.json`` through ``elpv_accuracy.run_recipe``; ``--table``
reads them back. One seed per variant: the test
split has 656 cells, so differences under about ±0.02 accuracy are within sampling noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elpv_accuracy import print_result, run_recipe
from machine import RESULTS

from inspectline.cli import profile_path
from inspectline.config import load_config

PROFILE = "elpv-cpu"
SCHEDULE = ["data.image_size=64", "train.epochs=10", "train.patience=10"]
BASE = [
    "augment.preset=light",
    "train.mixup_alpha=0",
    "train.label_smoothing=0",
    "train.weight_decay=0.0001",
    "model.head_dropout=[0.2,0.1,0.0]",
    "train.weight_averaging=none",
    "calibration.threshold_policy=max_f1",  # accuracy at max F1, as the reference comparison uses
]
# the `train` preset with every heavy augmentation off; variants turn one of them back on
_HEAVY_OFF = [
    "augment.preset=train",
    "augment.affine=0",
    "augment.elastic=0",
    "augment.grid_distortion=0",
    "augment.clahe=0",
    "augment.noise=0",
    "augment.blur=0",
    "augment.coarse_dropout=0",
]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("light preset, no mixup / label smoothing, wd 1e-4, head dropout 0.2/0.1/0", []),
    "mixup": ("+ mixup (alpha 0.2 on half the batches)", ["train.mixup_alpha=0.2", "train.mixup_prob=0.5"]),
    "label-smoothing": ("+ label smoothing 0.1", ["train.label_smoothing=0.1"]),
    "elastic-grid": (
        "+ elastic (p 0.2) and grid distortion (p 0.2)",
        [*_HEAVY_OFF, "augment.elastic=0.2", "augment.grid_distortion=0.2"],
    ),
    "coarse-dropout": ("+ coarse dropout (p 0.3)", [*_HEAVY_OFF, "augment.coarse_dropout=0.3"]),
    "head-dropout": ("head dropout 0.5/0.3/0.2", ["model.head_dropout=[0.5,0.3,0.2]"]),
    "weight-decay": ("weight decay 0.05", ["train.weight_decay=0.05"]),
    "preset-reference": (
        "`reference` preset: flips, 90° rotations, small affine (the reference's augmentations)",
        ["augment.preset=reference", "augment.affine=0.5"],
    ),
    "preset-train": ("`train` preset: every augmentation", ["augment.preset=train"]),
    "sampling-natural": (
        "no class-weighted sampling: batches keep the data's own defect share (31 %)",
        ["train.balanced_sampling=false"],
    ),
    "ema": ("+ EMA of the weights (decay warming up to 0.999)", ["train.weight_averaging=ema"]),
    "swa": ("+ SWA over the last 25 % of the epochs", ["train.weight_averaging=swa"]),
    "regularisation-stack": (
        "the old `elpv-budget` stack: train preset, mixup, label smoothing 0.1, wd 0.05, head dropout 0.5/0.3/0.2",
        [
            "augment.preset=train",
            "train.mixup_alpha=0.2",
            "train.mixup_prob=0.5",
            "train.label_smoothing=0.1",
            "train.weight_decay=0.05",
            "model.head_dropout=[0.5,0.3,0.2]",
        ],
    ),
    # not regularisers: does bf16 autocast (CPUs with AMX / AVX512-BF16) learn as well as fp32? Run both on one machine.
    "precision-fp32": ("base trained in fp32", ["train.precision=fp32"]),
    "precision-bf16": ("base trained with bf16 autocast (needs native bf16)", ["train.precision=bf16"]),
    "resolution-96": ("base at 96 px", ["data.image_size=96"]),
    "resolution-128": ("base at 128 px", ["data.image_size=128"]),
}


def table() -> str:
    """The ablation table: each variant against ``base``, from the recorded results."""
    rows = {}
    for name in VARIANTS:
        path = RESULTS / f"elpv_ablation_{name}.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
    if not rows:
        return "no ablation results recorded yet"
    base = rows.get("base")
    first = next(iter(rows.values()))
    loads = [r["load_average_before"][0] for r in rows.values()]
    lines = [
        f"ResNet18 from scratch, {first['config']['train']['epochs']} epochs, base at "
        f"{(base or first)['config']['data']['image_size']} px, accuracy at the max-F1 threshold, "
        f"on {first['machine']['cpu']} ({first['machine']['cpu_cores']} cores; 1-minute load average at the "
        f"variants' starts {min(loads):.1f}-{max(loads):.1f}).",
        "",
        "| variant | change | accuracy | Δ vs base | ROC-AUC | Δ vs base | 4-class | train acc (last epoch) | "
        "val acc (last epoch) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        d_acc = f"{r['accuracy'] - base['accuracy']:+.4f}" if base and name != "base" else ""
        d_auc = f"{r['roc_auc'] - base['roc_auc']:+.4f}" if base and name != "base" else ""
        lines.append(
            f"| `{name}` | {VARIANTS[name][0]} | {r['accuracy']:.4f} | {d_acc} | {r['roc_auc']:.4f} | {d_auc} | "
            f"{_f(r.get('four_class_accuracy'))} | {_f(r.get('final_train_accuracy'), 3)} | "
            f"{_f(r.get('final_val_accuracy'), 3)} |"
        )
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help=f"any of: {', '.join(VARIANTS)}")
    parser.add_argument("--all", action="store_true", help="run every variant, in the order listed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every variant")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if args.list:
        for name, (what, overrides) in VARIANTS.items():
            print(f"{name:<22} {what}\n{'':<22} {' '.join(overrides) or '(base)'}")
        return
    if args.table:
        print(table())
        return
    names = list(VARIANTS) if args.all else args.variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown or no variants {unknown}; choose from {', '.join(VARIANTS)}")
    for name in names:
        overrides = [*SCHEDULE, *args.overrides, *BASE, *VARIANTS[name][1], f"paths.runs={args.runs}"]
        cfg = load_config(profile_path(PROFILE), overrides)
        result = run_recipe(cfg, recipe=PROFILE, name=f"ablation_{name}", overrides=overrides)
        print_result(result)
    print()
    print(table())


if __name__ == "__main__":
    main()
