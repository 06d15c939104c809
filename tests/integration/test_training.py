"""A real (tiny) training run: data -> fit -> calibration -> evaluation -> report -> registry."""

import json
from pathlib import Path

import numpy as np
import pytest

from inspectline.config import build_config
from inspectline.data import compute_normalization, load_images, load_samples, load_split_manifest
from inspectline.evaluate import evaluate_model
from inspectline.registry import ModelRegistry

pytestmark = pytest.mark.integration

HISTORY_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_best_f1",
    "val_roc_auc",
    "gap_accuracy",
    "gap_loss",
    "prediction_diversity",
    "seconds",
}


def test_run_folder_holds_everything_to_reproduce_it(trained_run):
    run = trained_run
    for name in (
        "config.yaml",
        "splits.json",
        "history.jsonl",
        "model.pt",
        "report/report.md",
        "report/metrics.json",
        "report/confusion.png",
        "report/roc_pr.png",
        "report/reliability.png",
        "report/training_curves.png",
    ):
        assert (run.run_dir / name).is_file(), name
    history = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == run.fit.epochs_run == 4
    assert all(HISTORY_KEYS <= set(row) for row in history)
    assert history[0]["lr"] < max(r["lr"] for r in history)  # OneCycle warms up


def test_the_model_learned_and_is_calibrated(trained_run):
    m = trained_run.evaluation.metrics
    assert m["roc_auc"] > 0.8, m
    card = trained_run.card
    assert card.temperature != 1.0 and 0 < card.threshold < 1
    assert card.metrics["roc_auc"] == pytest.approx(m["roc_auc"])
    summary = json.loads((trained_run.run_dir / "report" / "metrics.json").read_text())
    assert {c["check"] for c in summary["readiness"]} == {
        "defect recall",
        "ROC-AUC",
        "expected calibration error",
        "CPU latency per frame (ms)",
    }
    assert summary["latency_ms"] > 0 and summary["parameters"] > 1_000_000
    report = (trained_run.run_dir / "report" / "report.md").read_text()
    for heading in ("Deployment readiness", "Per class", "Threshold sweep", "Calibration", "Training"):
        assert heading in report


def test_normalisation_statistics_come_from_the_training_split(trained_run):
    cfg = build_config(json.loads(json.dumps(trained_run.card.config)))
    splits = load_split_manifest(trained_run.run_dir / "splits.json", load_samples(cfg.data))
    mean, std = compute_normalization(load_images(splits.train, "gray"), cfg.data.image_size)
    assert trained_run.card.preprocessing.mean == pytest.approx(mean)
    assert trained_run.card.preprocessing.std == pytest.approx(std)


def test_registered_version_evaluates_to_the_same_numbers(trained_run, tmp_path: Path):
    registry = ModelRegistry(tmp_path / "models")
    version = registry.register(trained_run.checkpoint)
    assert (version.path / "report" / "report.md").is_file() and (version.path / "splits.json").is_file()
    cfg = build_config(
        trained_run.card.config | {"paths": {"registry": str(registry.root), "reports": str(tmp_path / "reports")}}
    )
    result = evaluate_model(cfg, model_ref=version.name, split="test")
    assert result.report.is_file() and (result.report.parent / "metrics.json").is_file()
    assert result.evaluation.model_version == "v0001"
    np.testing.assert_allclose(result.evaluation.probabilities, trained_run.evaluation.probabilities, atol=1e-5)
    assert result.evaluation.metrics["f1"] == pytest.approx(trained_run.evaluation.metrics["f1"])
