"""A real (tiny) training run: data -> fit -> calibration -> evaluation -> report -> registry."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from inspectline.cli import app
from inspectline.config import build_config
from inspectline.data import compute_normalization, load_images, load_samples, load_split_manifest
from inspectline.evaluate import evaluate_model
from inspectline.registry import ModelRegistry
from inspectline.store import FrameStore
from tests.unit.store.factories import record
from tests.unit.training.test_history import read_scalars

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
    "images_per_s",
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
    assert len(history) == run.fit.epochs_run == 8
    assert all(HISTORY_KEYS <= set(row) for row in history)
    assert history[0]["lr"] < max(r["lr"] for r in history)  # OneCycle warms up


def test_tensorboard_shows_the_same_curves_as_the_history(trained_run):
    """`tensorboard --logdir runs/` finds an event file in the run folder holding every epoch's scalars."""
    scalars = read_scalars(trained_run.run_dir)
    history = trained_run.fit.history
    for tag, key in (("train/loss", "train_loss"), ("val/roc_auc", "val_roc_auc"), ("gap/accuracy", "gap_accuracy")):
        assert [step for step, _ in scalars[tag]] == [row["epoch"] for row in history]
        assert scalars[tag][-1][1] == pytest.approx(history[-1][key], rel=1e-5)


def test_the_model_learned_and_is_calibrated(trained_run):
    """The tiny set's crack is learnt for certain in the fixture's budget, on any CPU (see tests.helpers)."""
    m = trained_run.evaluation.metrics
    assert m["roc_auc"] > 0.8, m
    # learnt, not guessed: over the second half of training the (class-balanced) batches are mostly right,
    # where guessing gets half; one epoch of batches of 4 is too noisy to judge alone
    late = [row["train_accuracy"] for row in trained_run.fit.history[len(trained_run.fit.history) // 2 :]]
    assert sum(late) / len(late) >= 0.7, late
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
    for heading in ("Deployment readiness", "Operating points", "Per class", "Threshold sweep", "Calibration"):
        assert heading in report
    assert "| epoch | train loss | val loss | loss gap (val - train)" in report  # the train-val gap, per epoch


def test_the_card_carries_both_operating_points_and_the_report_compares_them(trained_run):
    points = trained_run.card.operating_points
    assert set(points) == {"max_f1", "target_recall"}
    assert points["target_recall"]["recall"] >= points["target_recall"]["target_recall"]
    assert {"threshold", "precision", "false_reject_rate", "escapes_per_10k", "prevalence"} <= set(points["max_f1"])
    rows = {row["point"]: row for row in trained_run.evaluation.operating_points}
    assert set(rows) == {"in force", "max_f1", "target_recall"}
    assert rows["in force"]["measured"]["threshold"] == trained_run.card.threshold


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


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_set_threshold_records_an_operating_point_that_show_and_evaluate_use(trained_run, tmp_path: Path):
    registry = ModelRegistry(tmp_path / "models")
    registry.register(trained_run.checkpoint)
    out = _cli(
        "models", "set-threshold", "v0001", "--recall", "1.0", "--reason", "no escapes on line 1",
        "--actor", "ana@plant", "--registry", str(registry.root),
    )  # fmt: skip
    point = registry.operating_point("v0001")
    assert "v0001: threshold" in out and point.actor == "ana@plant" and point.reason == "no escapes on line 1"
    assert point.expected["recall"] == 1.0 and point.basis.startswith("target recall 1 on validation")
    # recomputed from the checkpoint and splits.json: the same validation outputs calibration saw
    assert point.threshold <= trained_run.card.operating_points["target_recall"]["threshold"] + 1e-6
    shown = json.loads(_cli("models", "show", "v0001", "--registry", str(registry.root)))
    assert shown["operating_point_in_force"]["threshold"] == point.threshold
    cfg = build_config(trained_run.card.config | {"paths": {"registry": str(registry.root)}})
    evaluation = evaluate_model(cfg, model_ref="v0001", split="test", out_dir=tmp_path / "eval").evaluation
    assert evaluation.metrics["threshold"] == point.threshold
    assert evaluation.operating_points[0]["basis"] == point.basis
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "target recall 1 on validation" in report and "training_curves.png" in report


def test_a_retrained_version_with_line_frames_evaluates_like_any_other(trained_run, tmp_path: Path, monkeypatch):
    """A retrained version's splits.json names line frames (frame:ID): they come from the frame store."""
    cfg = build_config(
        trained_run.card.config
        | {
            "paths": {"registry": str(tmp_path / "models"), "reports": str(tmp_path / "reports")},
            "store": {"database_url": f"sqlite:///{tmp_path / 'frames.db'}", "storage_url": str(tmp_path / "images")},
        }
    )
    with FrameStore(cfg.store) as store:
        store.add_frames([record(f"f{i}", shade=40 * i, verdict="DEFECTIVE") for i in range(3)])
        ids = [store.find("line-a", "cam1", f"f{i}").id for i in range(3)]
        for i, frame_id in enumerate(ids):
            store.set_label(frame_id, "defective" if i else "ok", "ana@plant")
    run_dir = tmp_path / "retrained"
    shutil.copytree(trained_run.run_dir, run_dir)
    manifest = json.loads((run_dir / "splits.json").read_text())
    manifest["splits"]["val"] += [{"key": f"frame:{i}", "label": "defective", "group": None} for i in ids]
    (run_dir / "splits.json").write_text(json.dumps(manifest))
    version = ModelRegistry(cfg.paths.registry).register(run_dir / "model.pt")
    temp = tmp_path / "temp"  # where the line frames' image copies go while they are judged
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    val = evaluate_model(cfg, model_ref=version.name, split="val").evaluation
    assert list(temp.iterdir()) == []  # the copies are gone once the report is written
    assert val.metrics["n"] == len(manifest["splits"]["val"]) and val.keys[-3:] == [f"frame:{i}" for i in ids]
    assert list(val.labels[-3:]) == [0, 1, 1]  # the labels reviewers gave in the store
    test = evaluate_model(cfg, model_ref=version.name, split="test").evaluation
    np.testing.assert_allclose(test.probabilities, trained_run.evaluation.probabilities, atol=1e-5)


def test_pooling_and_width_from_config_travel_in_the_card_and_through_a_warm_start(folder_dataset, tmp_path):
    """model.pooling: gem and model.width: 0.5 are trained, saved in the card, and kept by a retrain from it."""
    from inspectline.model import GeneralizedMeanPool, load_checkpoint
    from inspectline.training.run import load_data, run_training, train_model
    from tests.helpers import tiny_config

    cfg = tiny_config(folder_dataset, tmp_path, model={"pooling": "gem", "width": 0.5}, train={"epochs": 2})
    run = run_training(cfg, run_dir=tmp_path / "gem", progress=False)
    model, card = load_checkpoint(run.run_dir / "model.pt")
    assert card.pooling == "gem" and isinstance(model.backbone.avgpool, GeneralizedMeanPool)
    assert model.backbone.avgpool.p.item() != 3.0  # learnt from its starting value
    assert card.width == 0.5 and model.feature_dim == 256

    plain = tiny_config(folder_dataset, tmp_path, train={"epochs": 1})  # says avg, full width: the checkpoint wins
    again = train_model(plain, load_data(plain), run_dir=tmp_path / "again", init_from=run.run_dir / "model.pt")
    assert again.card.pooling == "gem" and again.card.width == 0.5
