"""What the threshold what-if costs on a large window: reading the labelled frames, one point, a sweep.

    python benchmarks/whatif_cost.py                   # 100,000 labelled frames in a SQLite store
    python benchmarks/whatif_cost.py --frames 20000

The store is a throwaway SQLite file (no images: the what-if reads rows only), filled with labelled
frames whose probabilities separate the classes about as well as the ELPV demo model. Timed: the read
(``FrameStore.labelled`` of the whole window), one :func:`what_if`, and a :func:`sweep` of the default 49
thresholds. Medians of ``--runs``; the load average is recorded because the CPU is shared. Writes
``benchmarks/results/whatif_cost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from machine import machine_info, save_result

from inspectline.config import StoreConfig
from inspectline.store import FrameRecord, FrameStore, LabelUpdate
from inspectline.whatif import sweep, what_if

T0 = datetime(2025, 3, 3, tzinfo=timezone.utc)


def median_s(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def fill(store: FrameStore, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    defective = rng.random(n) < 0.3
    p = np.clip(np.where(defective, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0.0, 1.0)
    for start in range(0, n, 2000):
        records = [
            FrameRecord(
                camera_id=f"cam{i % 4}",
                frame_id=f"f{i:07d}",
                line_id="line-1",
                part_id=None,
                captured_at=None,
                received_at=T0 + timedelta(seconds=i),
                verdict="DEFECTIVE" if p[i] >= 0.5 else "OK",
                defect_probability=float(p[i]),
                confidence=float(max(p[i], 1 - p[i])),
                threshold=0.5,
                model_version="v0001",
                views={"identity": float(p[i]), "hflip": float(p[i])},
            )
            for i in range(start, min(start + 2000, n))
        ]
        store.add_frames(records)
        stored = store.find_many((r.camera_id, r.frame_id) for r in records)
        store.set_labels(
            [
                LabelUpdate(stored[(r.camera_id, r.frame_id)].id, "defective" if defective[i] else "ok", "bench")
                for i, r in zip(range(start, start + len(records)), records, strict=True)
            ]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="whatif-cost-") as tmp:
        cfg = StoreConfig(database_url=f"sqlite:///{Path(tmp) / 'frames.db'}", storage_url=str(Path(tmp) / "images"))
        with FrameStore(cfg) as store:
            started = time.perf_counter()
            fill(store, args.frames, args.seed)
            fill_s = time.perf_counter() - started
            read_s, frames = median_s(store.labelled, args.runs)
            point_s, point = median_s(lambda: what_if(frames, 0.5, 0.05), args.runs)
            sweep_s, points = median_s(lambda: sweep(frames, 0.05), args.runs)
    load_after = os.getloadavg()
    result = {
        "frames": len(frames),
        "fill_seconds": fill_s,
        "read_labelled_seconds": read_s,
        "what_if_seconds": point_s,
        "sweep_seconds": sweep_s,
        "sweep_points": len(points),
        "example": point.to_dict(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": machine_info(),
    }
    print(
        "| labelled frames | read (s) | one what-if (s) | sweep of "
        f"{len(points)} (s) |\n|---|---|---|---|\n| {len(frames):,} | {read_s:.2f} | {point_s:.3f} | {sweep_s:.3f} |"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    print(f"written: {save_result('whatif_cost', result)}")


if __name__ == "__main__":
    main()
