"""Drift detection on real ELPV frames: false-alarm rate and detection delay.

    python benchmarks/drift_detection.py --model production        # a registered model (e.g. make demo's)

The model's drift reference (its validation split) is compared with windows of its *test* split:
unshifted (random windows: how often does a clean window alarm?) and shifted (darker, blurred, a
different product: how many frames after the shift until the alarm?). Window, interval and alpha
are the service defaults in serve_config.yaml. Writes ``benchmarks/results/drift_<version>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drift_sets import shifted_sets
from machine import machine_info, save_result

from inspectline.config import DataConfig
from inspectline.data import load_images, load_samples, load_split_manifest
from inspectline.monitoring.drift import DriftReference, detection_delays, false_alarm_rate, frame_features
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--model", default="production")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--trials", type=int, default=20, help="detection trials per shift")
    parser.add_argument("--windows", type=int, default=1000, help="unshifted windows for the false-alarm rate")
    args = parser.parse_args()

    registry = ModelRegistry(args.registry)
    checkpoint = registry.resolve(args.model)
    predictor = Predictor.load(checkpoint)
    reference = DriftReference.load(checkpoint.parent / "drift_reference.npz")
    data = DataConfig.model_validate(predictor.card.config["data"])
    test = load_split_manifest(checkpoint.parent / "splits.json", load_samples(data)).test
    frames = load_images(test, "gray")
    clean = frame_features(predictor, frames)
    rate, per_signal = false_alarm_rate(reference, clean, window=args.window, alpha=args.alpha, trials=args.windows)
    shifts = {}
    for name, shifted in shifted_sets(frames).items():
        delays = detection_delays(
            reference,
            clean,
            frame_features(predictor, shifted),
            window=args.window,
            interval=args.interval,
            alpha=args.alpha,
            trials=args.trials,
        )
        found = [d for d in delays if d is not None]
        shifts[name] = {
            "detected": len(found) / len(delays),
            "median_delay_frames": float(np.median(found)) if found else None,
            "max_delay_frames": max(found) if found else None,
            "delays": delays,
        }
    result = {
        "model": predictor.version,
        "arch": predictor.card.arch,
        "image_size": predictor.card.preprocessing.image_size,
        "reference_frames": len(reference.probabilities),
        "test_frames": len(frames),
        "window": args.window,
        "interval": args.interval,
        "alpha": args.alpha,
        "false_alarm_rate": rate,
        "false_alarm_rate_per_signal": per_signal,
        "unshifted_windows": args.windows,
        "shifts": shifts,
        "machine": machine_info(),
    }
    out = save_result(f"drift_{predictor.version or 'model'}", result)
    print(
        f"\nDrift detection, {predictor.version} ({predictor.card.arch} @ "
        f"{predictor.card.preprocessing.image_size} px), "
        f"window {args.window}, every {args.interval}, alpha {args.alpha}"
    )
    print(f"| {'condition':<24} | {'alarms':>14} | {'delay (frames) median / max':>28} |")
    print(f"|{'-' * 26}|{'-' * 16}|{'-' * 30}|")
    print(f"| {'unshifted (false alarms)':<24} | {rate:>14.4f} | {'':>28} |")
    for name, s in shifts.items():
        print(
            f"| {name:<24} | {s['detected']:>13.0%} | {s['median_delay_frames'] or float('nan'):>13.0f} / "
            f"{s['max_delay_frames'] or float('nan'):<12.0f} |"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
