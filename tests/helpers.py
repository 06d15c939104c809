"""Helpers shared by tests: synthetic but learnable cell images and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspectline.config import InspectConfig, build_config
from inspectline.imaging import encode_png

IMAGE_SIDE = 40


def make_cell(rng: np.random.Generator, defective: bool, side: int = IMAGE_SIDE) -> np.ndarray:
    """A gray uint8 frame; defective ones carry a dark diagonal crack."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = 150 + 40 * np.sin(3 * x + rng.uniform(0, 3)) * np.cos(2 * y) + rng.normal(0, 6, (side, side))
    image[:, side // 3] -= 30  # bus bars
    image[:, 2 * side // 3] -= 30
    if defective:
        start = rng.integers(0, side // 2)
        for i in range(side // 2):
            r, c = start + i, int(side * 0.2) + i + rng.integers(-1, 2)
            image[min(r, side - 1), max(0, min(c, side - 1)) : max(0, min(c + 3, side))] = 25
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
    """A config that trains a ResNet18 at 32 px for a few epochs in seconds."""
    raw = {
        "data": {
            "source": "folder",
            "path": str(data_path),
            "image_size": 32,
            "test_size": 0.25,
            "val_size": 0.25,
            "seed": 3,
        },
        "model": {"arch": "resnet18", "head_dims": [32, 16]},
        "train": {"epochs": 4, "batch_size": 8, "lr": 0.003, "patience": 10, "collapse_warmup": 10, "seed": 0},
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
