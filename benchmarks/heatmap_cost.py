"""What a heatmap costs per frame, next to what the verdict itself costs, on this machine.

    python benchmarks/heatmap_cost.py                 # ResNet18 @ 128 (demo) and ResNet50 @ 224 (full recipe)
    python benchmarks/heatmap_cost.py --runs 5        # fewer repetitions on a busy machine

For each model, with the default method (HiResCAM on layer3, the card's TTA views identity + hflip) on
a 300x300 gray frame (an ELPV cell):

* ``verdict``: ``Predictor.predict`` of one frame (preprocess + TTA forward), for the ratio;
* ``explain 1``: ``Explainer.explain`` of one frame (forward + backward over both views, maps
  un-flipped, averaged, resized): the on-demand cost of ``GET /v1/frames/{id}/heatmap`` on a miss;
* ``explain 8``: per frame within a batch of 8: the precompute worker's cost;
* ``render``: both PNGs (overlay + 16-bit raw);
* ``miss`` / ``hit``: :meth:`HeatmapCache.png` end to end on a SQLite + local-folder store: read and
  decode the stored image, explain, render and write both PNGs / read the cached file.

Weights are random: the cost of a forward and backward does not depend on their values. Medians over
``--runs`` after warm-up; the machine's load average is recorded before and after, because the CPU is
shared. Writes ``benchmarks/results/heatmap_cost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from machine import machine_info, save_result

from inspectline.config import StoreConfig
from inspectline.data.presets import Preprocessing
from inspectline.explain import KINDS, Explainer, render
from inspectline.hardware import cpu_capabilities
from inspectline.heatmap_cache import HeatmapCache
from inspectline.imaging import encode_png
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.predictor import Predictor
from inspectline.store import FrameRecord, FrameStore

MODELS = {"resnet18@128": ("resnet18", 128), "resnet50@224": ("resnet50", 224)}
FRAME_SIDE = 300


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def build_predictor(arch: str, size: int) -> Predictor:
    torch.manual_seed(0)
    card = ModelCard(
        arch=arch,
        class_names=("ok", "defective"),
        head_dims=(512, 256),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=size, color_mode="gray", mean=(0.6,), std=(0.15,)),
        version="v0001",
    )
    return Predictor(build_model(arch, in_channels=1).eval(), card)


def cache_costs(predictor: Predictor, frame: np.ndarray, runs: int) -> dict[str, float]:
    """Miss and hit of the stored-frame cache: each miss is a frame with new bytes, so nothing is reused."""
    with tempfile.TemporaryDirectory(prefix="heatmap-cost-") as tmp:
        root = Path(tmp)
        save_checkpoint(root / "model.pt", predictor.model, predictor.card)
        cfg = StoreConfig(database_url=f"sqlite:///{root / 'frames.db'}", storage_url=str(root / "images"))
        with FrameStore(cfg) as store:
            frames = []
            for i in range(runs + 3):
                shifted = frame.copy()
                shifted[0, 0] = i % 256  # new bytes, new image hash
                shifted[0, 1] = i // 256
                record = FrameRecord(
                    camera_id="cam1",
                    frame_id=f"f{i}",
                    line_id="line-a",
                    part_id=None,
                    captured_at=None,
                    received_at=datetime.now(timezone.utc),
                    verdict="DEFECTIVE",
                    defect_probability=0.9,
                    confidence=0.9,
                    threshold=0.5,
                    model_version="v0001",
                    views={"identity": 0.9},
                    image=encode_png(shifted),
                    image_format="png",
                )
                store.add_frames([record])
                frames.append(store.find("line-a", "cam1", f"f{i}"))
            cache = HeatmapCache(store, lambda _: root / "model.pt")
            pending = iter(frames)
            miss = median_ms(lambda: cache.png(next(pending)), runs)
            hit = median_ms(lambda: cache.png(frames[0]), runs)
    return {"miss_ms": miss, "hit_ms": hit}


def measure(name: str, runs: int) -> dict:
    arch, size = MODELS[name]
    predictor = build_predictor(arch, size)
    explainer = Explainer.from_predictor(predictor)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (FRAME_SIDE, FRAME_SIDE), dtype=np.uint8)
    batch = [rng.integers(0, 256, (FRAME_SIDE, FRAME_SIDE), dtype=np.uint8) for _ in range(8)]
    [heatmap] = explainer.explain([frame])
    row = {
        "model": name,
        "tta_views": list(predictor.tta_views),
        "method": f"{explainer.method} on {'+'.join(explainer.stages)}",
        "verdict_ms": median_ms(lambda: predictor.predict([frame]), runs),
        "explain_1_ms": median_ms(lambda: explainer.explain([frame]), runs),
        "explain_8_ms_per_frame": median_ms(lambda: explainer.explain(batch), max(runs // 2, 3), warmup=1) / 8,
        "render_ms": median_ms(lambda: [render(kind, frame, heatmap) for kind in KINDS], runs),
        **cache_costs(predictor, frame, runs),
    }
    row["explain_over_verdict"] = row["explain_1_ms"] / row["verdict_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for name in args.models:
        rows.append(measure(name, args.runs))
        print(f"{name}: {rows[-1]}", flush=True)
    load_after = os.getloadavg()
    result = {
        "protocol": (
            f"{FRAME_SIDE}x{FRAME_SIDE} gray frame, random weights, card TTA views, medians of {args.runs} runs "
            "after warm-up, CPU"
        ),
        "rows": rows,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_capabilities": cpu_capabilities().to_dict(),
        "machine": machine_info(),
    }
    print(
        "\n| model | verdict (ms) | heatmap, 1 frame (ms) | heatmap / verdict | heatmap in batch of 8 (ms/frame) "
        "| render both PNGs (ms) | cache miss (ms) | cache hit (ms) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['verdict_ms']:.0f} | {r['explain_1_ms']:.0f} | {r['explain_over_verdict']:.1f}x | "
            f"{r['explain_8_ms_per_frame']:.0f} | {r['render_ms']:.1f} | {r['miss_ms']:.0f} | {r['hit_ms']:.1f} |"
        )
    print(f"{cpu_capabilities().describe()}, {torch.get_num_threads()} torch threads")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    print(f"written: {save_result('heatmap_cost', result)}")


if __name__ == "__main__":
    main()
