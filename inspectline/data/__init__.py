"""Datasets: sources, splits, albumentations presets and loaders (see each module's docstring)."""

from inspectline.data.loader import FrameDataset, class_sample_weights, create_loader, loader_workers
from inspectline.data.presets import (
    Preprocessing,
    build_eval_preset,
    build_train_preset,
    compute_normalization,
    resize_images,
)
from inspectline.data.sources import (
    CLASS_NAMES,
    DEFECTIVE,
    OK,
    Sample,
    describe,
    load_images,
    load_samples,
    source_root,
)
from inspectline.data.splits import (
    Splits,
    holdout,
    load_split,
    load_split_manifest,
    save_split_manifest,
    split_samples,
)

__all__ = [
    "CLASS_NAMES",
    "DEFECTIVE",
    "OK",
    "FrameDataset",
    "Preprocessing",
    "Sample",
    "Splits",
    "build_eval_preset",
    "build_train_preset",
    "class_sample_weights",
    "compute_normalization",
    "create_loader",
    "describe",
    "holdout",
    "load_images",
    "load_samples",
    "load_split",
    "load_split_manifest",
    "loader_workers",
    "resize_images",
    "save_split_manifest",
    "source_root",
    "split_samples",
]
