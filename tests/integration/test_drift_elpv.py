"""Drift detection evidence on real ELPV frames with a model trained on ELPV.

A brightness drop, a blur and a different product must each raise the alarm within two windows;
unshifted held-out frames (the test split, against the validation reference) may raise it in no
more than alpha of at least 2,000 windows.
"""

from __future__ import annotations

import pytest

from benchmarks.drift_sets import shifted_sets
from inspectline.config import build_config
from inspectline.data import load_images, load_samples, load_split_manifest
from inspectline.monitoring.drift import DriftReference, detection_delays, false_alarm_rate, frame_features
from inspectline.predictor import Predictor
from inspectline.training import run_training

pytestmark = pytest.mark.integration
WINDOW, INTERVAL, ALPHA = 200, 50, 0.01  # the service defaults (serve_config.yaml)


@pytest.fixture(scope="module")
def elpv(tmp_path_factory):
    """A small model trained on ELPV (32 px, one epoch), its reference and its test-split frames."""
    work = tmp_path_factory.mktemp("drift_elpv")
    cfg = build_config(
        {
            "data": {"image_size": 32},
            "model": {"arch": "resnet18", "head_dims": [64, 32]},
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.003},
            "paths": {"runs": str(work / "runs")},
        }
    )
    run = run_training(cfg, progress=False)
    splits = load_split_manifest(run.run_dir / "splits.json", load_samples(cfg.data))
    frames = load_images(splits.test, "gray")
    predictor = Predictor.load(run.checkpoint)
    reference = DriftReference.load(run.run_dir / "drift_reference.npz")
    assert len(reference.probabilities) == len(splits.val)  # the reference is the validation split
    return predictor, reference, frames, frame_features(predictor, frames)


def test_unshifted_frames_raise_the_alarm_in_at_most_alpha_of_the_windows(elpv):
    _, reference, _, clean = elpv
    rate, per_signal = false_alarm_rate(reference, clean, window=WINDOW, alpha=ALPHA, trials=2000)
    assert rate <= ALPHA, (rate, per_signal)


@pytest.mark.parametrize("shift", ["darker", "blurred", "other_product"])
def test_each_shift_is_detected_within_two_windows(elpv, shift):
    predictor, reference, frames, clean = elpv
    shifted = frame_features(predictor, shifted_sets(frames)[shift])
    delays = detection_delays(reference, clean, shifted, window=WINDOW, interval=INTERVAL, alpha=ALPHA, trials=10)
    assert all(d is not None and d <= 2 * WINDOW for d in delays), delays
