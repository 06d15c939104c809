"""Which CAM method and stage point at cracks: localisation on frames whose crack pixels are known.

    python benchmarks/heatmap_methods.py                          # train on synthetic cracked cells, score
    python benchmarks/heatmap_methods.py --model models/v0001 --data elpv --sheet out/elpv_sheet.png

Synthetic part: gray solar-cell-like frames (gradient, bus bars, noise) where half carry a thin dark
crack of random position, angle and length; the crack's pixels are the ground truth. A ResNet18 at the
chosen size is trained on them with ``inspect train``'s own pipeline, then every method x stage explains
the defective test frames it judges DEFECTIVE, scored by

* pointing game: the heatmap's peak lies within ``--tolerance`` pixels of a crack pixel;
* energy lift: the heatmap's mass inside the tolerance band divided by the band's share of the frame
  (1 = no better than a flat map).

With ``--model``, a contact sheet of the most defective test frames of a real model (ELPV cells have no
crack masks) shows each method side by side for the eye. Writes ``benchmarks/results/heatmap_methods.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
from machine import machine_info, save_result

from inspectline.config import build_config, load_config
from inspectline.data import load_samples, load_split_manifest
from inspectline.explain import METHODS, Explainer, render_overlay
from inspectline.imaging import encode_png, read_image, to_model_image
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from inspectline.training import run_training

RECIPES = [(method, stages) for method in METHODS for stages in (("layer4",), ("layer3",), ("layer3", "layer4"))]


def crack_frame(rng: np.random.Generator, side: int, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A gray uint8 cell and its crack mask (all False for an OK frame)."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = 150 + 35 * np.sin(3 * x + rng.uniform(0, 3)) * np.cos(2 * y + rng.uniform(0, 3))
    image += rng.normal(0, 7, (side, side))
    for bar in (side // 3, 2 * side // 3):
        image[:, bar - 1 : bar + 1] -= 35
    mask = np.zeros((side, side), np.uint8)
    if defective:
        length = rng.uniform(0.2, 0.45) * side
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.25, 0.75, 2) * side
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        points = np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]])
        kink = points.mean(axis=0) + rng.normal(0, side * 0.03, 2)  # cracks are rarely straight
        cv2.polylines(mask, [np.array([points[0], kink, points[1]], np.int32)], False, 1, thickness=2)
        image[mask > 0] = rng.uniform(25, 60)
    return np.clip(image, 0, 255).astype(np.uint8), mask > 0


def train_on_cracks(workdir: Path, side: int, n: int, epochs: int, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """Write the frames, train with the project's pipeline; returns the checkpoint and masks by sample key."""
    rng = np.random.default_rng(seed)
    masks: dict[str, np.ndarray] = {}
    for name in ("ok", "defective"):
        (workdir / "data" / name).mkdir(parents=True)
        for i in range(n // 2):
            image, mask = crack_frame(rng, side, name == "defective")
            key = f"{name}/{i:04d}.png"
            (workdir / "data" / key).write_bytes(encode_png(image))
            masks[key] = mask
    cfg = build_config(
        {
            "data": {"source": "folder", "path": str(workdir / "data"), "image_size": side, "seed": seed},
            "model": {"arch": "resnet18", "head_dims": [128, 64]},
            "augment": {"preset": "light"},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003, "patience": epochs, "seed": seed},
            "readiness": {"min_defect_recall": 0.0, "min_roc_auc": 0.0, "max_latency_ms": 1e9},
            "paths": {k: str(workdir / k) for k in ("runs", "registry", "reports")},
        }
    )
    run = run_training(cfg, progress=False)
    print(
        f"trained: test accuracy {run.evaluation.metrics['accuracy']:.3f}, ROC-AUC {run.evaluation.metrics['roc_auc']}"
    )
    return run.checkpoint, masks


def localisation(heatmap: np.ndarray, mask: np.ndarray, tolerance: int) -> tuple[bool, float]:
    """(peak within the band around the crack, energy lift of the band)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    band = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    total = float(heatmap.sum())
    lift = (float(heatmap[band].sum()) / total) / band.mean() if total > 0 else 0.0
    return bool(band[peak]), lift


def score_recipes(checkpoint: Path, masks: dict[str, np.ndarray], tolerance: int) -> list[dict]:
    run_dir = checkpoint.parent
    cfg = load_config(run_dir / "config.yaml")
    samples = load_split_manifest(run_dir / "splits.json", load_samples(cfg.data))["test"]
    predictor = Predictor.load(checkpoint)
    frames = [read_image(s.path) for s in samples if s.label == 1]
    keys = [s.key for s in samples if s.label == 1]
    caught = [i for i, p in enumerate(predictor.predict(frames)) if p.verdict == "DEFECTIVE"]
    print(f"{len(caught)} of {len(frames)} defective test frames judged DEFECTIVE are explained")
    rows = []
    for method, stages in RECIPES:
        explainer = Explainer.from_predictor(predictor, method=method, stages=stages)
        started = time.perf_counter()
        heatmaps = explainer.explain([frames[i] for i in caught])
        per_frame_ms = (time.perf_counter() - started) * 1000 / max(len(caught), 1)
        scores = [localisation(h, masks[keys[i]], tolerance) for h, i in zip(heatmaps, caught, strict=True)]
        rows.append(
            {
                "method": method,
                "stages": "+".join(stages),
                "frames": len(scores),
                "pointing_game": statistics.fmean(hit for hit, _ in scores) if scores else None,
                "energy_lift": statistics.fmean(lift for _, lift in scores) if scores else None,
                "ms_per_frame": per_frame_ms,
            }
        )
        r = rows[-1]
        print(f"  {method:10} {r['stages']:14} pointing {r['pointing_game']:.3f}  lift {r['energy_lift']:.2f}")
    return rows


def contact_sheet(model_ref: str, registry: Path, data: str, out: Path, count: int) -> None:
    """The ``count`` most defective test frames of a real model, one row each: frame, then every method."""
    checkpoint = ModelRegistry(registry).resolve(model_ref)
    predictor = Predictor.load(checkpoint)
    cfg = load_config(checkpoint.parent / "config.yaml", [f"data.source={data}"])
    samples = load_split_manifest(checkpoint.parent / "splits.json", load_samples(cfg.data))["test"]
    defective = [s for s in samples if s.label == 1]
    frames = [read_image(s.path) for s in defective]
    probs = [p.defect_probability for p in predictor.predict(frames)]
    picked = [frames[i] for i in np.argsort(probs)[::-1][:count]]
    recipes = [(m, ("layer4",)) for m in METHODS] + [("gradcam", ("layer3",)), ("layercam", ("layer3", "layer4"))]
    columns = [[to_model_image(f, "rgb") for f in picked]]
    for method, stages in recipes:
        heatmaps = Explainer.from_predictor(predictor, method=method, stages=stages).explain(picked)
        columns.append([render_overlay(f, h) for f, h in zip(picked, heatmaps, strict=True)])
    rows = [np.hstack([cv2.resize(col[r], (160, 160)) for col in columns]) for r in range(len(picked))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(np.vstack(rows)))
    print(f"contact sheet ({' | '.join(['frame', *(m + ':' + '+'.join(s) for m, s in recipes)])}): {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="frame side = model input (px)")
    parser.add_argument("--frames", type=int, default=480, help="synthetic frames, half cracked")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--tolerance", type=int, default=6, help="pixels around the crack that count as on it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="also draw a contact sheet for this model version (REF)")
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--data", default="elpv")
    parser.add_argument("--sheet", type=Path, default=Path("heatmap_methods_sheet.png"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="heatmap-methods-") as tmp:
        started = time.perf_counter()
        checkpoint, masks = train_on_cracks(Path(tmp), args.size, args.frames, args.epochs, args.seed)
        train_s = time.perf_counter() - started
        rows = score_recipes(checkpoint, masks, args.tolerance)
    result = {
        "protocol": (
            f"synthetic {args.size}px cells, {args.frames} frames (half cracked), ResNet18 trained {args.epochs} "
            f"epochs with inspect train's pipeline; defective test frames judged DEFECTIVE; tolerance "
            f"{args.tolerance}px; defect log-odds target, TTA views of the model card"
        ),
        "train_seconds": train_s,
        "recipes": rows,
        "machine": machine_info(),
    }
    print("\n| method | stages | frames | pointing game | energy lift | ms/frame |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["pointing_game"]):
        print(
            f"| {r['method']} | {r['stages']} | {r['frames']} | {r['pointing_game']:.3f} | {r['energy_lift']:.2f} | "
            f"{r['ms_per_frame']:.0f} |"
        )
    print(f"written: {save_result('heatmap_methods', result)}")
    if args.model:
        contact_sheet(args.model, args.registry, args.data, args.sheet, count=6)


if __name__ == "__main__":
    main()
