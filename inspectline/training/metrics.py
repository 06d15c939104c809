"""Classification and calibration metrics for the binary OK/DEFECTIVE task (scikit-learn underneath).

Everything takes ``y_true`` (0 = ok, 1 = defective) and ``prob`` (the defect probability). Metrics
that are undefined on the data (ROC-AUC with one class present) are ``None``, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from inspectline.data.sources import CLASS_NAMES

SWEEP_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# ELPV's annotated defect probabilities: the four classes of the literature's 4-class results.
FOUR_CLASS_LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
PER_PARTS = 10_000  # escapes and false rejects are counted per this many parts


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Headline metrics at ``threshold`` plus threshold-free ROC-AUC and PR-AUC."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = (np.asarray(prob) >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return {
        "threshold": float(threshold),
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if both else None,
        "precision": float(precision[1]),
        "recall": float(recall[1]),
        "f1": float(f1[1]),
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", labels=[0, 1], zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, prob)) if both else None,
        "pr_auc": float(average_precision_score(y_true, prob)) if both else None,
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }


def threshold_sweep(y_true: np.ndarray, prob: np.ndarray, thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> list[dict]:
    """Precision, recall, F1 and false-positive rate at each threshold."""
    rows = []
    for t in sorted(set(thresholds)):
        m = classification_metrics(y_true, prob, t)
        c = m["confusion"]
        rows.append(
            {
                "threshold": float(t),
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "false_positive_rate": c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else None,
                "flagged_share": (c["tp"] + c["fp"]) / max(m["n"], 1),
            }
        )
    return rows


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017): mean |accuracy - confidence| over equal-width confidence bins."""
    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    predicted = (prob >= 0.5).astype(int)
    confidence = np.where(predicted == 1, prob, 1.0 - prob)  # in [0.5, 1]
    correct = (predicted == y_true).astype(float)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def best_f1(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The highest defect F1 over all thresholds: the F1 of the operating point calibration will pick."""
    y_true = np.asarray(y_true, dtype=int)
    if y_true.min() == y_true.max():
        return 0.0
    precision, recall, _ = precision_recall_curve(y_true, prob)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0
    )
    return float(f1.max())


def prediction_diversity(y_pred: np.ndarray) -> float:
    """Share of the most predicted class: 1.0 means every sample got the same class (collapse)."""
    if len(y_pred) == 0:
        return 1.0
    return float(np.bincount(np.asarray(y_pred, dtype=int)).max() / len(y_pred))


def four_class_metrics(annotated: np.ndarray, prob: np.ndarray) -> dict:
    """4-class accuracy (0, ⅓, ⅔, 1) of a binary model: its calibrated probability taken at the nearest level.

    ``annotated`` holds the annotators' defect probabilities (ELPV's ``defect_probability``). The binary
    model is not trained on the four levels, so this measures how well its calibrated probability
    ranks the annotators' uncertainty; it is reported because the ELPV literature reports it.
    Returns accuracy, the 4×4 confusion (rows annotated, columns predicted) and per-level recall.
    """
    levels = np.array(FOUR_CLASS_LEVELS)
    truth = np.abs(np.asarray(annotated, dtype=float)[:, None] - levels).argmin(axis=1)
    predicted = np.abs(np.asarray(prob, dtype=float)[:, None] - levels).argmin(axis=1)
    confusion = confusion_matrix(truth, predicted, labels=range(len(levels)))
    support = confusion.sum(axis=1)
    return {
        "accuracy": float((truth == predicted).mean()) if len(truth) else None,
        "levels": [round(float(v), 4) for v in levels],
        "confusion": confusion.tolist(),
        "recall_per_level": [float(confusion[i, i] / n) if n else None for i, n in enumerate(support)],
        "support": support.tolist(),
    }


def point_metrics(labels: np.ndarray, prob: np.ndarray, threshold: float, prevalence: float | None = None) -> dict:
    """Recall, precision, false-reject rate and escapes / false rejects per 10,000 parts at ``threshold``.

    ``prevalence`` is the defect share the per-10,000 figures assume (default: this set's own).
    """
    labels = np.asarray(labels, dtype=int)
    flagged = np.asarray(prob) >= threshold
    defective, good = labels == 1, labels == 0
    recall = float(flagged[defective].mean()) if defective.any() else None
    false_reject_rate = float(flagged[good].mean()) if good.any() else None
    precision = float(defective[flagged].mean()) if flagged.any() else None
    prevalence = float(defective.mean()) if prevalence is None else float(prevalence)
    return {
        "threshold": float(threshold),
        "accuracy": float((flagged == defective).mean()) if len(labels) else None,
        "recall": recall,
        "precision": precision,
        "false_reject_rate": false_reject_rate,
        "prevalence": prevalence,
        "escapes_per_10k": None if recall is None else PER_PARTS * prevalence * (1 - recall),
        "false_rejects_per_10k": None
        if false_reject_rate is None
        else PER_PARTS * (1 - prevalence) * false_reject_rate,
    }
