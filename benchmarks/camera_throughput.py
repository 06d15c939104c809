"""Camera benchmark: frames per second one camera adapter sustains against a served model, by posts in flight.

    inspect serve                                                     # in a folder with models/ (see below)
    python benchmarks/camera_throughput.py --url http://127.0.0.1:8000 --in-flight 1,4,8

One camera that is always faster than the service (its frames are ready in memory, like a camera
whose spool is full): the adapter (``run_adapter``, the real one: spool, results log, in-order
settling) posts ELPV cells as PNG, ``--frames`` per run, and the rate is judged frames / wall time.
Runs alternate between the in-flight settings (``--repeats`` rounds) so a machine whose load drifts
affects each setting alike; the table gives the median per setting and its ratio to one in flight
(the behaviour before several posts could be in flight). Every run uses fresh frame ids, so the
service judges every frame (never answers from memory). The adapter runs in this process on the same
machine as the service: its CPU share is recorded, and so is the load average.

Without a trained model, ``--setup DIR`` writes ``DIR/models`` with a randomly initialised ResNet18 at
128 px (the demo profile's architecture: the speed of the demo model, not its verdicts) and the
command to serve it. Writes ``benchmarks/results/camera_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result

from inspectline.camera_adapters.runner import AdapterSettings, run_adapter
from inspectline.camera_adapters.source import Frame, Outcome
from inspectline.camera_adapters.uploader import UploadSettings
from inspectline.config import DataConfig
from inspectline.data import load_samples


class ReadyFrames:
    """A camera faster than the service: every frame is ready at once, with ids unique to this run."""

    def __init__(self, images: list[bytes], n: int, run: str):
        self.images, self.n, self.run = images, n, run

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        for i in range(self.n):
            if stop.is_set():
                return
            yield Frame(
                frame_id=f"bench-{self.run}-{i:05d}",
                camera_id="bench-cam",
                captured_at=datetime.now(timezone.utc),
                image=self.images[i % len(self.images)],
                content_type="image/png",
            )

    def settle(self, frame: Frame, outcome: Outcome) -> None:
        pass


def measure(url: str, images: list[bytes], frames: int, in_flight: int, workdir: Path, run: str) -> dict:
    settings = AdapterSettings(
        line_id="bench-line",
        camera_id="bench-cam",
        upload=UploadSettings(url=url, timeout_s=60),
        spool_dir=workdir / f"spool-{run}",
        queue_size=frames,
        max_in_flight=in_flight,
        results_log=workdir / f"results-{run}.jsonl",
    )
    cpu, wall = time.process_time(), time.perf_counter()
    summary = run_adapter(ReadyFrames(images, frames, run), settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "in_flight": in_flight,
        "judged": summary.judged,
        "retries": summary.retries,
        "seconds": wall,
        "frames_per_s": summary.judged / wall,
        "adapter_cpu_share": cpu / (wall * (os.cpu_count() or 1)),
        "load_average_1m": os.getloadavg()[0],
    }


def setup(folder: Path) -> None:
    from serve_throughput import random_init_registry

    folder.mkdir(parents=True, exist_ok=True)
    registry = random_init_registry(folder, "resnet18", 128)
    config = Path(__file__).resolve().parents[1] / "serve_config.yaml"
    print(f"wrote {registry.root} (random-init ResNet18 @ 128 px). Serve it with:")
    print(f"  cd {folder} && inspect serve --config {config}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--in-flight", default="1,4,8", help="comma-separated posts in flight to compare")
    parser.add_argument("--frames", type=int, default=200, help="frames per run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the settings")
    parser.add_argument("--name", default="demo", help="result name: benchmarks/results/camera_<name>.json")
    parser.add_argument("--setup", type=Path, help="write a random-init demo-sized model registry here and exit")
    args = parser.parse_args()
    if args.setup:
        setup(args.setup)
        return
    settings = [int(v) for v in args.in_flight.split(",")]
    ready = httpx.get(f"{args.url}/readyz", timeout=10).json()
    model = httpx.get(f"{args.url}/v1/model", timeout=10).json()
    images = [s.path.read_bytes() for s in load_samples(DataConfig())[:64]]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        measure(args.url, images, 32, max(settings), Path(tmp), "warm-up")  # load and warm every replica
        for repeat in range(args.repeats):
            for in_flight in settings:
                run = measure(args.url, images, args.frames, in_flight, Path(tmp), f"{repeat}-{in_flight}")
                print(f"round {repeat + 1}, {in_flight} in flight: {run['frames_per_s']:.1f} frames/s")
                runs.append(run)
    by_setting = {k: statistics.median(r["frames_per_s"] for r in runs if r["in_flight"] == k) for k in settings}
    base = by_setting.get(1)
    result = {
        "name": args.name,
        "url": args.url,
        "model_version": ready.get("model_version"),
        "arch": model.get("arch"),
        "image_size": model.get("image_size"),
        "tta_views": model.get("tta_views"),
        "frames_per_run": args.frames,
        "repeats": args.repeats,
        "frames_per_s_median": by_setting,
        "ratio_to_one_in_flight": {k: v / base for k, v in by_setting.items()} if base else None,
        "runs": runs,
        "machine": machine_info(),
    }
    out = save_result(f"camera_{args.name}", result)
    print(f"\n{result['arch']} @ {result['image_size']} px, {args.frames} frames per run, median of {args.repeats}")
    print("| posts in flight | frames/s | x one in flight | adapter CPU share | load avg (1 min) |")
    print("|---|---|---|---|---|")
    for k in settings:
        mine = [r for r in runs if r["in_flight"] == k]
        ratio = f"{by_setting[k] / base:.2f}" if base else "-"
        cpu = statistics.median(r["adapter_cpu_share"] for r in mine)
        load = statistics.median(r["load_average_1m"] for r in mine)
        print(f"| {k} | {by_setting[k]:.1f} | {ratio} | {cpu:.1%} | {load:.1f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
