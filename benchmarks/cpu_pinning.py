"""Whether OpenVINO may pin its inference threads to cores, measured as the service runs it.

OpenVINO's CPU plugin pins a process's inference threads to cores counted from the first
(``ENABLE_CPU_PINNING``, on by default on Linux). It knows nothing of other processes, so when the
service runs one single-thread inspector replica per CPU, every replica may land on the same core.
Here a version's OpenVINO export runs through the Predictor (preprocessing and the card's TTA views,
batches of ``--batch`` ELPV frames) in both layouts of the machine's cores — one process per core of
one thread each (the replicas' layout), and one process of all the threads — with pinning on and off,
the two alternating over ``--rounds``. Per layout: frames/s and the cores the processes actually used
(their CPU time over the wall time), medians over the rounds.

    python -m benchmarks.cpu_pinning --registry models --model production
    python -m benchmarks.cpu_pinning --registry models --model v0003 --precision int8 --rounds 5

Results go to ``benchmarks/results/cpu_pinning.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info, save_result
from benchmarks.raw_layouts import layouts_for, run_together, time_predictor
from inspectline.card import ModelCard
from inspectline.config import DataConfig
from inspectline.data import load_samples
from inspectline.engines import EnginePreference, OpenVinoEngine
from inspectline.engines.choice import choose_engine
from inspectline.engines.openvino_engine import compile_options
from inspectline.hardware import cpu_capabilities
from inspectline.imaging import decode_image
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry

PINNING = (True, False)


def _worker(
    queue: mp.Queue,
    barrier: mp.Barrier,
    model_xml: str,
    precision: str,
    card: dict,
    threads: int,
    pinning: bool,
    frames: list[np.ndarray],
    batch: int,
    seconds: float,
) -> None:
    import openvino as ov

    compiled = ov.Core().compile_model(model_xml, "CPU", compile_options(precision, threads, cpu_pinning=pinning))
    engine = OpenVinoEngine(compiled, precision=precision)
    predictor = Predictor(engine, ModelCard.model_validate(card))
    report = time_predictor(predictor, frames, batch=batch, seconds=seconds, barrier=barrier)
    queue.put(report | {"cpu_pinning": engine.cpu_pinning})


def measure(
    model_xml: Path,
    precision: str,
    card: ModelCard,
    frames: list[np.ndarray],
    *,
    processes: int,
    threads: int,
    pinning: bool,
    batch: int,
    seconds: float,
) -> dict:
    """``processes`` processes of ``threads`` threads at once; their frames/s summed and the cores they used."""
    args = (str(model_xml), precision, card.model_dump(mode="json"), threads, pinning, frames, batch, seconds)
    reports = run_together(_worker, args, processes)
    if any(r["cpu_pinning"] != pinning for r in reports):
        msg = f"asked for cpu_pinning={pinning}, the plugin compiled {[r['cpu_pinning'] for r in reports]}"
        raise RuntimeError(msg)
    return {
        "frames_per_s": sum(r["frames"] / r["seconds"] for r in reports),
        "cores_used": sum(r["cpu_seconds"] for r in reports) / max(r["seconds"] for r in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, required=True, help="a model registry folder")
    parser.add_argument("--model", default="production", help="a version or alias with an OpenVINO export")
    parser.add_argument("--precision", default="auto", help="which OpenVINO export (default: the fastest that passed)")
    parser.add_argument("--batch", type=int, default=8, help="frames per predict call")
    parser.add_argument("--seconds", type=float, default=8.0, help="per layout, pinning and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    registry = ModelRegistry(args.registry)
    version = registry.get(registry.resolve(args.model).parent.name)  # aliases: production, latest
    choice = choose_engine(version, EnginePreference(engine="openvino", precision=args.precision))
    model_xml = version.path / choice.export.path
    frames = [decode_image(s.path.read_bytes()) for s in load_samples(DataConfig())[:64]]
    cores = os.cpu_count() or 1

    rows = []
    for processes, threads in reversed(layouts_for(cores)):  # the replicas' layout first
        passes: dict[bool, list[dict]] = {pin: [] for pin in PINNING}
        for round_ in range(args.rounds):
            for pin in PINNING if round_ % 2 == 0 else reversed(PINNING):
                passes[pin].append(
                    measure(
                        model_xml,
                        choice.precision,
                        version.card,
                        frames,
                        processes=processes,
                        threads=threads,
                        pinning=pin,
                        batch=args.batch,
                        seconds=args.seconds,
                    )
                )
        row: dict = {"layout": f"{processes}x{threads}", "processes": processes, "threads": threads}
        for pin, results in passes.items():
            row["pinned" if pin else "unpinned"] = {
                "frames_per_s": statistics.median(r["frames_per_s"] for r in results),
                "cores_used": statistics.median(r["cores_used"] for r in results),
                "rounds": results,
            }
        row["unpinned_over_pinned"] = row["unpinned"]["frames_per_s"] / row["pinned"]["frames_per_s"]
        rows.append(row)

    caps = cpu_capabilities()
    result = {
        "model": version.name,
        "arch": version.card.arch,
        "image_size": version.card.preprocessing.image_size,
        "tta_views": list(version.card.tta_views),
        "engine": "openvino",
        "precision": choice.precision,
        "batch": args.batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "rows": rows,
        "machine": machine_info() | {"cpu_flags": sorted(caps.flags)},
    }
    out = save_result("cpu_pinning", result)
    print(
        f"\nOpenVINO {choice.precision}, {version.card.arch} @ {version.card.preprocessing.image_size} px, "
        f"batch {args.batch}, medians of {args.rounds} alternating rounds, {result['machine']['cpu']}"
    )
    print("| layout | pinned: frames/s (cores used) | unpinned: frames/s (cores used) | unpinned ÷ pinned |")
    print("|---|---|---|---|")
    for row in rows:
        pinned, unpinned = row["pinned"], row["unpinned"]
        print(
            f"| {row['layout']} | {pinned['frames_per_s']:.1f} ({pinned['cores_used']:.2f}) "
            f"| {unpinned['frames_per_s']:.1f} ({unpinned['cores_used']:.2f}) | {row['unpinned_over_pinned']:.2f} |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
