"""The training-throughput benchmark times the recipe's own network and loader."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.training_throughput import measure_row
from inspectline.cli import profile_path
from inspectline.config import load_config
from inspectline.data import load_images
from inspectline.model import build_model
from inspectline.training import load_data


def test_a_narrow_recipe_is_timed_as_the_narrow_network_it_trains(folder_dataset: Path):
    overrides = [f"data.path={folder_dataset}", "data.source=folder", "model.pooling=gem"]
    cfg = load_config(profile_path("elpv-cpu-long"), overrides)  # a quarter-width ResNet18, the train preset
    splits = load_data(cfg)
    args = argparse.Namespace(profile="elpv-cpu-long", overrides=overrides, steps=1, rounds=1)

    row = measure_row("resnet18", 32, "fp32", args, splits, load_images(splits.train, "gray"))

    m = cfg.model
    narrow = build_model("resnet18", in_channels=1, head_dims=m.head_dims, width=m.width, pooling="gem")
    full = build_model("resnet18", in_channels=1, head_dims=m.head_dims, pooling="gem")
    assert m.width == 0.25
    assert row["parameters"] == sum(p.numel() for p in narrow.parameters())
    assert row["parameters"] < sum(p.numel() for p in full.parameters()) / 4
    assert (row["width"], row["pooling"], row["augment_preset"]) == (0.25, "gem", "train")
    assert row["train_images_per_s"] > 0 and row["raw_images_per_s"] > 0 and row["images_timed"] > 0
