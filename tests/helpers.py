"""Helpers shared by tests: synthetic but learnable cell images and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspectline.config import InspectConfig, build_config
from inspectline.imaging import encode_png

IMAGE_SIDE = 40


def make_cell(rng: np.random.Generator, defective: bool, side: int = IMAGE_SIDE) -> np.ndarray:
    """A gray uint8 frame; defective ones carry a dark diagonal crack.

    The crack is the signal tiny training runs must learn for certain, on any CPU: it is dark (20 on a
    background of about 150), 4 px wide and at least half the side long, so that it survives the
    downscale to 32 px and shifts the frame's dark-pixel share far beyond what the background varies.
    """
    y, x = np.mgrid[0:side, 0:side] / side
    image = 150 + 40 * np.sin(3 * x + rng.uniform(0, 3)) * np.cos(2 * y) + rng.normal(0, 6, (side, side))
    image[:, side // 3] -= 30  # bus bars
    image[:, 2 * side // 3] -= 30
    if defective:
        start = rng.integers(0, side // 2)
        for i in range(side // 2):
            r, c = start + i, int(side * 0.2) + i + rng.integers(-1, 2)
            image[min(r, side - 1), max(0, min(c, side - 1)) : max(0, min(c + 4, side))] = 20
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: Path, n_per_class: int = 24, seed: int = 0) -> dict[str, list[Path]]:
    """Folder layout ROOT/ok, ROOT/defective; returns the written files per class."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {"ok": [], "defective": []}
    for name in files:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            path = root / name / f"{name}_{i:03d}.png"
            path.write_bytes(encode_png(make_cell(rng, name == "defective")))
            files[name].append(path)
    return files


def tiny_config(data_path: Path, workdir: Path, **sections: dict) -> InspectConfig:
    """A config that trains a ResNet18 at 32 px in seconds and learns the crack for certain.

    A from-scratch recipe without the regularisers that make a dozen steps a lottery (mixup, label
    smoothing, heavy augmentation, head dropout), batches of 4 so that 8 epochs are ~50 optimiser
    steps (BatchNorm's running statistics settle, so eval-mode outputs match what was learnt), and
    fp32 on every CPU (no bf16 autocast on the CPUs that have it) so runs agree across machines.
    """
    raw = {
        "data": {
            "source": "folder",
            "path": str(data_path),
            "image_size": 32,
            "test_size": 0.25,
            "val_size": 0.25,
            "seed": 3,
        },
        "augment": {"preset": "light"},
        "model": {"arch": "resnet18", "head_dims": [32, 16], "head_dropout": [0.0, 0.0, 0.0]},
        "train": {
            "epochs": 8,
            "batch_size": 4,
            "lr": 0.003,
            "weight_decay": 0.0001,
            "label_smoothing": 0.0,
            "mixup_alpha": 0.0,
            "patience": 10,
            "collapse_warmup": 10,
            "precision": "fp32",
            "seed": 0,
        },
        "readiness": {"min_defect_recall": 0.5, "min_roc_auc": 0.5, "max_latency_ms": 5000},
        "paths": {
            "runs": str(workdir / "runs"),
            "registry": str(workdir / "models"),
            "reports": str(workdir / "reports"),
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return build_config(raw)
