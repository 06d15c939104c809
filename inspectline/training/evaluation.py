"""Evaluate a :class:`Predictor` on labelled samples: metrics, calibration, latency and readiness.

The numbers here are those of the served pipeline: the same preprocessing, TTA views, temperature
and threshold the service uses. ``evaluate_predictor`` returns an :class:`Evaluation` that the report
module renders and ``inspect evaluate`` writes to disk.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from inspectline.config import ReadinessConfig
from inspectline.data.sources import Sample
from inspectline.imaging import read_image
from inspectline.predictor import Predictor
from inspectline.training.metrics import (
    classification_metrics,
    expected_calibration_error,
    four_class_metrics,
    point_metrics,
    threshold_sweep,
)

_MAX_BREAKDOWN_VALUES = 12


@dataclass
class Evaluation:
    """Everything measured about one model on one set of samples."""

    model_version: str | None
    split: str
    keys: list[str]
    labels: np.ndarray
    probabilities: np.ndarray  # calibrated defect probability (TTA, temperature)
    raw_probabilities: np.ndarray  # same views, temperature 1
    metrics: dict
    sweep: list[dict]
    ece_before: float
    ece_after: float
    temperature: float
    latency_ms: float | None
    parameters: int
    size_bytes: int | None
    readiness: list[dict]
    breakdown: dict[str, list[dict]] = field(default_factory=dict)
    operating_points: list[dict] = field(default_factory=list)
    four_class: dict | None = None  # ELPV-style sources with annotated defect probabilities

    def summary(self) -> dict:
        """The JSON-able part (no per-sample arrays)."""
        doc = asdict(self)
        for key in ("keys", "labels", "probabilities", "raw_probabilities"):
            doc.pop(key)
        doc["ready"] = all(c["passed"] for c in self.readiness)
        return doc


def collect_outputs(
    predictor: Predictor, samples: Sequence[Sample], images: Sequence[np.ndarray] | None = None, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """TTA view logits ``(V, N, K)`` and embeddings ``(N, D)`` for every sample, in order."""
    logits, embeddings = [], []
    for start in range(0, len(samples), batch_size):
        chunk = range(start, min(start + batch_size, len(samples)))
        frames = [images[i] if images is not None else read_image(samples[i].path) for i in chunk]
        out = predictor.forward(torch.stack([predictor.preprocess(f) for f in frames]))
        logits.append(out.view_logits)
        embeddings.append(out.embeddings)
    return torch.cat(logits, dim=1), torch.cat(embeddings)


def evaluate_predictor(
    predictor: Predictor,
    samples: Sequence[Sample],
    readiness: ReadinessConfig,
    *,
    images: Sequence[np.ndarray] | None = None,
    split: str = "test",
    size_bytes: int | None = None,
    measure_latency: bool = True,
    in_force: str | None = None,
) -> Evaluation:
    """Judge every sample and compute the full set of metrics at the predictor's threshold.

    ``in_force`` describes where the predictor's threshold comes from when it is not the card's
    (an operating point set after training); the report names it.
    """
    labels = np.array([s.label for s in samples], dtype=int)
    view_logits, _ = collect_outputs(predictor, samples, images)
    calibrated, _ = predictor.calibrated_probabilities(view_logits)
    raw = torch.softmax(view_logits.mean(dim=0), dim=-1)[:, predictor.card.defect_index].numpy()
    metrics = classification_metrics(labels, calibrated, predictor.threshold)
    ece_after = expected_calibration_error(labels, calibrated)
    latency = None
    if measure_latency:
        frame = images[0] if images is not None else read_image(samples[0].path)
        latency = cpu_latency_ms(predictor, frame)
    return Evaluation(
        model_version=predictor.version,
        split=split,
        keys=[s.key for s in samples],
        labels=labels,
        probabilities=calibrated,
        raw_probabilities=raw,
        metrics=metrics,
        sweep=threshold_sweep(labels, calibrated),
        ece_before=expected_calibration_error(labels, raw),
        ece_after=ece_after,
        temperature=predictor.card.temperature,
        latency_ms=latency,
        parameters=sum(p.numel() for p in predictor.model.parameters()),
        size_bytes=size_bytes,
        readiness=readiness_checks(metrics, ece_after, latency, readiness),
        breakdown=breakdown(samples, labels, calibrated >= predictor.threshold),
        operating_points=operating_point_table(predictor, labels, calibrated, in_force),
        four_class=_four_class(samples, calibrated),
    )


def cpu_latency_ms(predictor: Predictor, frame: np.ndarray, runs: int = 15) -> float:
    """Median wall time of judging one frame (preprocessing + TTA forward) on the CPU."""
    cpu = predictor
    if predictor.device.type != "cpu":
        cpu = Predictor(
            copy.deepcopy(predictor.model).cpu(), predictor.card, device="cpu", tta_views=predictor.tta_views
        )
    for _ in range(3):
        cpu.predict([frame])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        cpu.predict([frame])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def readiness_checks(metrics: dict, ece: float, latency_ms: float | None, cfg: ReadinessConfig) -> list[dict]:
    """Deployment gates with the limits from config; each check says its value, limit and outcome."""

    def check(name: str, value: float | None, limit: float, higher_is_better: bool) -> dict:
        passed = value is not None and (value >= limit if higher_is_better else value <= limit)
        return {
            "check": name,
            "value": value,
            "limit": limit,
            "rule": ">=" if higher_is_better else "<=",
            "passed": passed,
        }

    return [
        check("defect recall", metrics["recall"], cfg.min_defect_recall, True),
        check("ROC-AUC", metrics["roc_auc"], cfg.min_roc_auc, True),
        check("expected calibration error", ece, cfg.max_ece, False),
        check("CPU latency per frame (ms)", latency_ms, cfg.max_latency_ms, False),
    ]


def operating_point_table(
    predictor: Predictor, labels: np.ndarray, prob: np.ndarray, in_force: str | None = None
) -> list[dict]:
    """The threshold in force and the card's validation points, measured on these samples.

    Per point: where it was chosen, the threshold, what validation expected and what these samples
    give (escapes and false rejects per 10,000 parts at the *validation* prevalence, so the numbers
    of a test split with another defect share stay comparable).
    """
    card_points = predictor.card.operating_points
    prevalence = next((p["prevalence"] for p in card_points.values() if "prevalence" in p), None)
    rows = [
        {
            "point": "in force",
            "basis": in_force or f"model card ({predictor.card.threshold_policy})",
            "expected": {},
            "measured": point_metrics(labels, prob, predictor.threshold, prevalence),
        }
    ]
    bases = {"max_f1": "max F1 on validation", "target_recall": "target recall {target_recall:g} on validation"}
    for name, expected in card_points.items():
        rows.append(
            {
                "point": name,
                "basis": bases.get(name, name).format(**expected),
                "expected": expected,
                "measured": point_metrics(labels, prob, expected["threshold"], prevalence),
            }
        )
    return rows


def _four_class(samples: Sequence[Sample], prob: np.ndarray) -> dict | None:
    annotated = [s.meta.get("defect_probability") for s in samples]
    if not samples or any(not isinstance(a, float) for a in annotated):
        return None
    return four_class_metrics(np.array(annotated), prob)


def breakdown(samples: Sequence[Sample], labels: np.ndarray, flagged: np.ndarray) -> dict[str, list[dict]]:
    """Accuracy and flag rate per value of each low-cardinality metadata key, and per combination."""
    keys = sorted({k for s in samples for k in s.meta})
    keys = [k for k in keys if 1 < len({s.meta.get(k) for s in samples}) <= _MAX_BREAKDOWN_VALUES]
    tables: dict[str, list[dict]] = {}
    for combo in [*([k] for k in keys), *([list(keys)] if len(keys) > 1 else [])]:
        values = [tuple(str(s.meta.get(k)) for k in combo) for s in samples]
        rows = []
        for value in sorted(set(values)):
            mask = np.array([v == value for v in values])
            rows.append(
                {
                    **dict(zip(combo, value, strict=True)),
                    "n": int(mask.sum()),
                    "defective_share": float(labels[mask].mean()),
                    "flagged_share": float(flagged[mask].mean()),
                    "accuracy": float((flagged[mask].astype(int) == labels[mask]).mean()),
                }
            )
        tables[" x ".join(combo)] = rows
    return tables
