"""Operating points: what a threshold means on the line, and choosing one for a registered version.

A threshold is the plant's decision. What a quality engineer needs to choose it is, at that
threshold: the defect recall, the precision, the false-reject rate (good parts rejected) and the
expected escapes (defective parts shipped) per 10,000 parts at the validation prevalence.

* :func:`~inspectline.training.metrics.point_metrics` computes those numbers for one threshold;
* :func:`standard_points` gives the two points every model card carries, chosen on validation:
  ``max_f1`` and ``target_recall`` (``calibration.target_recall``);
* :func:`choose_operating_point` is ``inspect models set-threshold``: for a registered version it
  recomputes the calibrated validation outputs from the version's checkpoint and ``splits.json``,
  picks the threshold for ``--recall`` (or takes ``--threshold``), and records it with
  ``ModelRegistry.set_operating_point`` with who, why and what it is expected to give. Running
  services pick it up as they pick up a promotion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inspectline.config import DataConfig, StoreConfig
from inspectline.data import load_images
from inspectline.errors import ConfigError
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry, OperatingPoint
from inspectline.training.calibration import choose_threshold
from inspectline.training.evaluation import collect_outputs
from inspectline.training.metrics import point_metrics


def standard_points(labels: np.ndarray, prob: np.ndarray, target_recall: float) -> dict[str, dict]:
    """The ``max_f1`` and ``target_recall`` points on validation outputs, with their metrics."""
    points = {}
    for policy in ("max_f1", "target_recall"):
        threshold = choose_threshold(labels, prob, policy, target_recall)
        points[policy] = point_metrics(labels, prob, threshold) | (
            {"target_recall": target_recall} if policy == "target_recall" else {}
        )
    return points


@dataclass(frozen=True)
class ThresholdRequest:
    """What ``inspect models set-threshold`` was asked: exactly one of ``recall`` and ``threshold``."""

    recall: float | None = None
    threshold: float | None = None
    unsure_band: float | None = None
    reason: str = ""
    actor: str = "system"

    def __post_init__(self) -> None:
        if (self.recall is None) == (self.threshold is None):
            msg = "give exactly one of --recall R (a target defect recall on validation) or --threshold T"
            raise ConfigError(msg)
        if self.recall is not None and not 0 < self.recall <= 1:
            msg = f"--recall {self.recall} must be in (0, 1]"
            raise ConfigError(msg)
        if self.threshold is not None and not 0 < self.threshold < 1:
            msg = f"--threshold {self.threshold} must be in (0, 1)"
            raise ConfigError(msg)
        if self.unsure_band is not None and not 0 <= self.unsure_band < 0.5:
            msg = f"--band {self.unsure_band} must be in [0, 0.5)"
            raise ConfigError(msg)
        if not self.reason.strip():
            msg = "--reason is required: say why the operating point changes (it goes into the audit trail)"
            raise ConfigError(msg)


def validation_outputs(
    registry: ModelRegistry, version: str, store: StoreConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated defect probabilities of a version's own validation split, recomputed."""
    from inspectline.evaluate import split_samples_of

    v = registry.get(version)
    predictor = Predictor.load(v.checkpoint)
    data = DataConfig.model_validate(predictor.card.config["data"])
    with split_samples_of(v.path / "splits.json", data, "val", store=store) as samples:
        view_logits, _ = collect_outputs(predictor, samples, load_images(samples, data.color_mode))
    probabilities, _ = predictor.calibrated_probabilities(view_logits)
    return np.array([s.label for s in samples], dtype=int), probabilities


def choose_operating_point(
    registry: ModelRegistry,
    version: str,
    request: ThresholdRequest,
    *,
    store: StoreConfig | None = None,
    outputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> OperatingPoint:
    """Compute and record a new operating point for ``version`` (see the module docstring)."""
    name = registry.get(version).name
    labels, prob = outputs if outputs is not None else validation_outputs(registry, name, store)
    if request.recall is not None:
        threshold = choose_threshold(labels, prob, "target_recall", request.recall)
        basis = f"target recall {request.recall:g} on validation ({len(labels)} frames)"
    else:
        threshold = float(request.threshold)
        basis = "manual threshold"
    expected = {k: v for k, v in point_metrics(labels, prob, threshold).items() if v is not None and k != "threshold"}
    point = OperatingPoint(
        threshold=float(np.clip(threshold, 1e-6, 1 - 1e-6)),
        unsure_band=request.unsure_band,
        basis=basis,
        expected=expected,
        actor=request.actor,
        reason=request.reason,
    )
    return registry.set_operating_point(name, point)


def describe_point(point: OperatingPoint | None, card_threshold: float) -> str:
    """One line for ``inspect models show``: the operating point in force."""
    if point is None:
        return f"threshold {card_threshold:.4f} from the model card (no operating point recorded)"
    e = point.expected
    expected = ", ".join(
        f"{label} {e[key]:.4g}"
        for key, label in (
            ("recall", "recall"),
            ("precision", "precision"),
            ("false_reject_rate", "false-reject rate"),
            ("escapes_per_10k", "escapes/10k"),
        )
        if key in e
    )
    band = "the service's band" if point.unsure_band is None else f"{point.unsure_band:g}"
    return (
        f"threshold {point.threshold:.4f} (UNSURE band {band}; {point.basis}); expected on validation: {expected}; "
        f"set by {point.actor} at {point.at}: {point.reason}"
    )
