"""Does averaging more views or more models lift a trained ELPV recipe? TTA view sets and seed ensembles.

    python benchmarks/elpv_views.py --run seed0=runs/A --run seed1=runs/B --name seeds

Each ``--run`` is a training run folder (``model.pt``, ``splits.json``, ``config.yaml``), optionally
labelled; all of the same split.
Every model judges the validation and test cells in all eight symmetries of the square (the dihedral
group: identity, flips, 90° rotations, transposes; the recipes train with flips and 90° rotations, so
every view is one the model has seen). From those logits, without judging anything twice:

* per model and per ensemble of all runs (mean of the calibrated defect probabilities), for the view
  sets ``identity``, ``flip2`` (identity + horizontal flip: what the service runs), ``flip4`` and
  ``d8``: test ROC-AUC, accuracy at the max-F1 threshold chosen on validation, 4-class accuracy, and
  recall / false-reject rate at the validation point that reaches recall 0.95 (the shipped policy).

Writes ``benchmarks/results/elpv_views_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result

from inspectline.config import DataConfig
from inspectline.evaluate import split_samples_of
from inspectline.hardware import cpu_capabilities
from inspectline.imaging import read_image
from inspectline.predictor import TTA_VIEWS, Predictor
from inspectline.training.metrics import four_class_metrics, point_metrics
from inspectline.training.operating_point import standard_points
from inspectline.training.precision import resolve_precision

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **TTA_VIEWS,  # identity, hflip, vflip, rot180: the views the service can run
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(1, (-2, -1)).flip(-1),
}
VIEW_SETS = {
    "identity": ("identity",),
    "flip2": ("identity", "hflip"),
    "flip4": tuple(TTA_VIEWS),
    "d8": tuple(VIEWS),
}
SPLITS = ("val", "test")
TARGET_RECALL = 0.95


def judge_run(run: Path, *, batch: int = 64) -> dict:
    """A run's predictor (for its calibration), its per-view logits on validation and test, and the labels."""
    data = DataConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text())["data"])
    predictor = Predictor.load(run / "model.pt", precision=resolve_precision("auto", torch.device("cpu")).name)
    out: dict = {"predictor": predictor}
    for split in SPLITS:
        with split_samples_of(run / "splits.json", data, split) as samples:
            images = torch.stack([predictor.preprocess(read_image(s.path)) for s in samples])
            out[split] = {
                "keys": [s.key for s in samples],
                "labels": np.array([s.label for s in samples]),
                "annotated": np.array([float(s.meta.get("defect_probability", s.label)) for s in samples]),
            }
        logits = {name: [] for name in VIEWS}
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            for name, view in VIEWS.items():
                logits[name].append(predictor.engine.run(view(chunk).contiguous()).logits.astype(np.float64))
        out[split]["logits"] = {name: np.concatenate(parts) for name, parts in logits.items()}
        print(f"  {run.name}: {split} judged in {len(VIEWS)} views ({len(images)} cells)", flush=True)
    return out


def probabilities(judged: dict, split: str, views: tuple[str, ...]) -> np.ndarray:
    """Defect probability per cell from ``views``' logits, calibrated as the service does."""
    view_logits = torch.from_numpy(np.stack([judged[split]["logits"][v] for v in views]))
    return judged["predictor"].calibrated_probabilities(view_logits)[0]


def score(val_labels, val_prob, test_labels, test_prob, test_annotated) -> dict:
    """Test metrics at thresholds chosen on validation, as the training report does."""
    from sklearn.metrics import roc_auc_score

    points = standard_points(val_labels, val_prob, TARGET_RECALL)
    max_f1 = point_metrics(test_labels, test_prob, points["max_f1"]["threshold"])
    shipped = point_metrics(test_labels, test_prob, points["target_recall"]["threshold"])
    return {
        "roc_auc": float(roc_auc_score(test_labels, test_prob)),
        "max_f1_accuracy": max_f1["accuracy"],
        "four_class_accuracy": four_class_metrics(test_annotated, test_prob)["accuracy"],
        "shipped_recall": shipped["recall"],
        "shipped_precision": shipped["precision"],
        "shipped_false_reject_rate": shipped["false_reject_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", action="append", required=True, metavar="[LABEL=]FOLDER", help="a training run folder (repeat)"
    )
    parser.add_argument("--name", default="runs", help="result name: elpv_views_<name>.json")
    args = parser.parse_args()

    runs = dict(_labelled(item) for item in args.run)
    judged = {label: judge_run(folder) for label, folder in runs.items()}
    first = next(iter(judged.values()))
    for name, j in judged.items():
        for split in SPLITS:
            if j[split]["keys"] != first[split]["keys"]:
                msg = f"{name} was trained on another split than {next(iter(runs))}: an ensemble needs the same cells"
                raise SystemExit(msg)

    rows = []
    members = {name: [name] for name in judged} | ({"ensemble of all": list(judged)} if len(judged) > 1 else {})
    for model, names in members.items():
        for view_set, views in VIEW_SETS.items():
            val = np.mean([probabilities(judged[n], "val", views) for n in names], axis=0)
            test = np.mean([probabilities(judged[n], "test", views) for n in names], axis=0)
            metrics = score(first["val"]["labels"], val, first["test"]["labels"], test, first["test"]["annotated"])
            rows.append({"model": model, "views": view_set, **metrics})

    result = {
        "runs": {label: str(folder) for label, folder in runs.items()},
        "view_sets": {k: list(v) for k, v in VIEW_SETS.items()},
        "target_recall": TARGET_RECALL,
        "test_cells": len(first["test"]["labels"]),
        "inference_precision": resolve_precision("auto", torch.device("cpu")).name,
        "rows": rows,
        "cpu_features": cpu_capabilities().to_dict(),
        "machine": machine_info(),
    }
    out = save_result(f"elpv_views_{args.name}", result)
    print("\n| model | views | ROC-AUC | max-F1 accuracy | 4-class | shipped recall / precision / false rejects |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['views']} | {r['roc_auc']:.4f} | {r['max_f1_accuracy']:.4f} | "
            f"{r['four_class_accuracy']:.4f} | {r['shipped_recall']:.3f} / {r['shipped_precision']:.3f} / "
            f"{r['shipped_false_reject_rate']:.3f} |"
        )
    print(f"wrote {out}")


def _labelled(item: str) -> tuple[str, Path]:
    """``LABEL=FOLDER`` or ``FOLDER`` (labelled by its name)."""
    label, sep, folder = item.partition("=")
    path = Path(folder if sep else item)
    if not (path / "model.pt").is_file():
        msg = f"{path} is not a training run folder (no model.pt)"
        raise SystemExit(msg)
    return (label if sep else path.name), path


if __name__ == "__main__":
    main()
