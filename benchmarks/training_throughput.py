"""Training throughput: is the input pipeline ever the bottleneck? Per architecture, image size and precision.

    python benchmarks/training_throughput.py                                  # resnet18 @ 128 px, auto precision
    python benchmarks/training_throughput.py --rows resnet18:128 resnet18:224 --precision fp32 bf16

For each row two things are timed, interleaved in rounds so that a machine shared with other jobs
slows both alike:

* **raw**: forward + backward + AdamW step of the model on synthetic tensors already in memory,
  channels-last, in the row's precision: the most the model can train per second here;
* **train**: the real training step, ``training.loop.train_one_epoch``, fed by the real loader on ELPV
  (decoded and resized once, the recipe's augmentation preset, class-balanced sampling, workers as
  ``train.num_workers`` resolves them on this machine).

``loader_ratio = train_images_per_s / raw_images_per_s`` (goal ≥ 0.9). Where the real loop's time
goes is reported per image: waiting for the loader's next batch (in-process augmentation, or workers
that fall behind) and the rest, the training step, beside the model alone. A loader-only rate (no
model) is reported too. ``auto`` precision measures fp32, and bf16 where the CPU has native bf16
(AMX / AVX512-BF16); bf16 can be forced on any CPU, where it is emulated and slow. Writes
``benchmarks/results/training_throughput.json`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result

from inspectline.cli import profile_path
from inspectline.config import load_config
from inspectline.data import (
    FrameDataset,
    Preprocessing,
    build_train_preset,
    compute_normalization,
    create_loader,
    load_images,
    loader_workers,
    resize_images,
)
from inspectline.hardware import cpu_capabilities, cpu_supports_bf16
from inspectline.model import build_model
from inspectline.training import load_data
from inspectline.training.loop import train_one_epoch
from inspectline.training.precision import autocast, resolve_precision


def raw_rate(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, precision, steps: int) -> tuple[int, float]:
    """Images and seconds of ``steps`` training steps on tensors already in memory."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(device, precision):
            loss = criterion(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return steps * batch.shape[0], time.perf_counter() - t0


class WaitedLoader:
    """``loader`` as the training loop sees it, adding up the time the loop waits for each batch."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - t0
            yield batch


def pipeline_rate(model: nn.Module, loader, cfg, precision) -> tuple[int, float]:
    """Images and seconds of one pass of the real training step over ``loader`` (a :class:`WaitedLoader`
    also adds up the part of those seconds spent waiting for batches)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    t0 = time.perf_counter()
    out = train_one_epoch(
        model,
        loader,
        nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        optimizer,
        scheduler,
        cfg,
        torch.device("cpu"),
        np.random.default_rng(0),
        precision=precision,
        progress=False,
    )
    return out["images"], time.perf_counter() - t0


def measure_row(arch: str, size: int, precision_name: str, args, splits, decoded) -> dict:
    cfg = load_config(profile_path(args.profile), [f"data.image_size={size}", f"model.arch={arch}", *args.overrides])
    t = cfg.train
    precision = resolve_precision(precision_name, torch.device("cpu"))
    mean, std = compute_normalization(decoded[:200], size)
    pre = Preprocessing(image_size=size, color_mode="gray", mean=mean, std=std)
    n = args.steps * t.batch_size
    samples, cache = splits.train[:n], resize_images(decoded[:n], size)
    dataset = FrameDataset(samples, build_train_preset(pre, cfg.augment, seed=0), "gray", cache)
    workers = loader_workers(t.num_workers)
    loader = create_loader(dataset, batch_size=t.batch_size, train=True, balanced=True, num_workers=workers)
    m = cfg.model  # the recipe's network as training builds it: width and pooling change its cost per image
    model = build_model(
        arch, in_channels=1, head_dims=m.head_dims, head_dropout=m.head_dropout, pooling=m.pooling, width=m.width
    )
    model = model.to(memory_format=torch.channels_last)
    batch = torch.randn(t.batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (t.batch_size,))
    raw_rate(model, batch, labels, precision, 2)  # warm-up: allocator, oneDNN kernels
    pipeline_rate(model, loader, cfg.train, precision)  # warm-up too: starts the loader's persistent workers

    raw_images = raw_seconds = train_images = train_seconds = 0.0
    waited = WaitedLoader(loader)
    for _ in range(args.rounds):  # interleaved: load from other jobs slows both sides alike
        i, s = raw_rate(model, batch, labels, precision, args.steps)
        raw_images, raw_seconds = raw_images + i, raw_seconds + s
        i, s = pipeline_rate(model, waited, cfg.train, precision)
        train_images, train_seconds = train_images + i, train_seconds + s
    t0 = time.perf_counter()
    seen = sum(int(y.shape[0]) for _, y in loader)
    loader_only = seen / (time.perf_counter() - t0)
    raw, train = raw_images / raw_seconds, train_images / train_seconds
    return {
        "arch": arch,
        "width": m.width,
        "pooling": m.pooling,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": size,
        "precision": precision.name,
        "batch_size": t.batch_size,
        "augment_preset": cfg.augment.preset,
        "num_workers": workers,
        "train_images_per_s": round(train, 2),
        "raw_images_per_s": round(raw, 2),
        # per image of the real loop: waiting for the loader, and everything else (the training step)
        "wait_ms_per_image": round(waited.seconds / train_images * 1e3, 3),
        "step_ms_per_image": round((train_seconds - waited.seconds) / train_images * 1e3, 3),
        "raw_ms_per_image": round(1e3 / raw, 3),
        "loader_ratio": round(train / raw, 3),
        "loader_only_images_per_s": round(loader_only, 1),
        "images_timed": int(train_images),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["resnet18:128"], help="arch:image_size ...")
    parser.add_argument("--precision", nargs="+", default=["auto"], help="auto, fp32, bf16 ...")
    parser.add_argument("--profile", default="elpv-cpu", help="the recipe whose loader and batch size are timed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--steps", type=int, default=12, help="training steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="training_throughput", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args()

    precisions = []
    for name in args.precision:
        precisions += (["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]) if name == "auto" else [name]
    splits = load_data(load_config(profile_path(args.profile), args.overrides))
    n = args.steps * max(load_config(profile_path(args.profile), args.overrides).train.batch_size, 64)
    decoded = load_images(splits.train[:n], "gray")
    load_before = os.getloadavg()
    rows = []
    for spec in args.rows:
        arch, _, size = spec.partition(":")
        for precision in precisions:
            rows.append(measure_row(arch, int(size), precision, args, splits, decoded))
            r = rows[-1]
            print(
                f"{r['arch']} x{r['width']:g} @ {r['image_size']} px {r['precision']}: "
                f"train {r['train_images_per_s']:.1f} img/s, raw {r['raw_images_per_s']:.1f} img/s, "
                f"ratio {r['loader_ratio']:.3f}",
                flush=True,
            )
    result = {
        "profile": args.profile,
        "overrides": args.overrides,
        "rows": rows,
        "cpu": cpu_capabilities().to_dict(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_info(),
    }
    out = save_result(args.name, result)
    print(
        "\n| arch | width | px | precision | train img/s | raw img/s | loader ratio (≥ 0.9) | loader alone img/s "
        "| ms/img: wait / step / raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['width']:g} | {r['image_size']} | {r['precision']} | {r['train_images_per_s']:.1f} | "
            f"{r['raw_images_per_s']:.1f} | {r['loader_ratio']:.3f} | {r['loader_only_images_per_s']:.0f} | "
            f"{r['wait_ms_per_image']:.2f} / {r['step_ms_per_image']:.2f} / {r['raw_ms_per_image']:.2f} |"
        )
    print(f"\nmachine: {cpu_capabilities().describe()}; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
