"""The training-throughput benchmark times the recipe's own network and loader."""

from __future__ import annotations

import argparse
import time
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
    real_loop_ms = 1e3 / row["train_images_per_s"]  # the loop's time per image is its wait plus its step
    assert row["wait_ms_per_image"] > 0
    assert abs(row["wait_ms_per_image"] + row["step_ms_per_image"] - real_loop_ms) < 0.01 * real_loop_ms


def test_the_loops_wait_for_batches_is_what_the_loader_made_it_wait():
    from benchmarks.training_throughput import WaitedLoader

    class Slow:
        def __len__(self) -> int:
            return 3

        def __iter__(self):
            for i in range(3):
                time.sleep(0.05)
                yield i

    waited = WaitedLoader(Slow())
    t0 = time.perf_counter()
    batches = []
    for batch in waited:
        batches.append(batch)
        time.sleep(0.02)  # the "training step": not waiting
    total = time.perf_counter() - t0
    assert batches == [0, 1, 2] and len(waited) == 3
    assert 0.15 <= waited.seconds < total - 0.05
