"""Operating points: their line metrics, the standard points, and set-threshold's record in the registry."""

import json
from pathlib import Path

import numpy as np
import pytest

from inspectline.data import Preprocessing
from inspectline.errors import ConfigError
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.registry import ModelRegistry
from inspectline.training.metrics import four_class_metrics, point_metrics
from inspectline.training.operating_point import ThresholdRequest, choose_operating_point, standard_points

# 10 frames, 4 defective; a threshold of 0.5 flags 3 defective and 1 good frame
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PROB = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])


def test_point_metrics_are_the_line_numbers():
    m = point_metrics(LABELS, PROB, 0.5)
    assert m["recall"] == 0.75 and m["precision"] == 0.75
    assert m["false_reject_rate"] == pytest.approx(1 / 6)
    assert m["accuracy"] == 0.8 and m["prevalence"] == 0.4
    assert m["escapes_per_10k"] == pytest.approx(10_000 * 0.4 * 0.25)  # 1,000 defective parts shipped
    assert m["false_rejects_per_10k"] == pytest.approx(10_000 * 0.6 / 6)
    at_other_prevalence = point_metrics(LABELS, PROB, 0.5, prevalence=0.01)
    assert at_other_prevalence["escapes_per_10k"] == pytest.approx(25.0)


def test_standard_points_hold_max_f1_and_the_target_recall():
    points = standard_points(LABELS, PROB, target_recall=1.0)
    # every defect in: the lowest defect scores 0.3, the next frame below it 0.2; the threshold sits mid-gap
    assert points["target_recall"]["recall"] == 1.0 and points["target_recall"]["threshold"] == pytest.approx(0.25)
    assert points["target_recall"]["target_recall"] == 1.0
    assert points["max_f1"]["threshold"] >= points["target_recall"]["threshold"]


def test_four_class_accuracy_takes_the_nearest_level():
    annotated = np.array([0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    prob = np.array([0.1, 0.2, 0.6, 0.95, 0.5])  # levels 0, 1/3, 2/3, 1, 2/3
    m = four_class_metrics(annotated, prob)
    assert m["accuracy"] == 0.8
    assert m["confusion"][3] == [0, 0, 1, 1] and m["support"] == [1, 1, 1, 2]
    assert m["recall_per_level"] == [1.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of --recall"),
        ({"recall": 0.9, "threshold": 0.5}, "exactly one of --recall"),
        ({"recall": 1.5}, "--recall 1.5"),
        ({"threshold": 1.0}, "--threshold 1.0"),
        ({"threshold": 0.5, "unsure_band": 0.7}, "--band 0.7"),
        ({"threshold": 0.5, "reason": " "}, "--reason is required"),
    ],
)
def test_requests_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ThresholdRequest(**({"reason": "line 3 asks for fewer escapes"} | kwargs))


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    card = ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(8,),
        head_dropout=(0.0, 0.0),
        preprocessing=Preprocessing(image_size=16, color_mode="gray", mean=(0.5,), std=(0.2,)),
        threshold=0.7,
    )
    model = build_model("resnet18", in_channels=1, head_dims=(8,), head_dropout=(0.0, 0.0))
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "model.pt", model, card)
    reg = ModelRegistry(tmp_path / "models")
    reg.register(tmp_path / "run" / "model.pt")
    return reg


def test_a_recall_target_becomes_the_operating_point_in_force_with_who_and_why(registry: ModelRegistry):
    request = ThresholdRequest(recall=1.0, reason="escapes cost more than re-inspection", actor="ana@plant")
    point = choose_operating_point(registry, "v0001", request, outputs=(LABELS, PROB))
    assert point.threshold == pytest.approx(0.25) and point.expected["recall"] == 1.0  # mid-gap of 0.2 and 0.3
    assert point.expected["precision"] == pytest.approx(4 / 6) and point.expected["escapes_per_10k"] == 0.0
    assert "target recall 1" in point.basis and point.actor == "ana@plant" and point.at
    assert registry.operating_point("v0001") == point
    audit = [json.loads(line) for line in (registry.root / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "operating_point" and audit[-1]["before"]["threshold"] == 0.7
    assert audit[-1]["reason"] == "escapes cost more than re-inspection"


def test_a_manual_threshold_is_recorded_with_what_it_gives(registry: ModelRegistry):
    request = ThresholdRequest(threshold=0.5, unsure_band=0.05, reason="trial on line 2", actor="bo")
    point = choose_operating_point(registry, "1", request, outputs=(LABELS, PROB))
    assert point.basis == "manual threshold" and point.unsure_band == 0.05
    assert point.expected["recall"] == 0.75 and point.expected["false_reject_rate"] == pytest.approx(1 / 6)
