"""Post-training calibration: temperature scaling and the operating threshold.

Temperature scaling (Guo et al. 2017) fits one scalar ``T`` on the validation logits by minimising
the negative log-likelihood; it changes confidence, never the ranking, so ROC-AUC is unchanged.
The logits fed here are the TTA-averaged logits the service computes, so the calibrated probability
is calibrated for the pipeline that is actually served.

On a validation split the network separates perfectly (a small line, a tiny test set), the
likelihood keeps falling as ``T`` shrinks and the plain fit runs to its bound, saturating every
probability at 0 or 1. The fit is therefore a MAP estimate with a weak normal prior on ``log T``
centred on 1: on thousands of validation frames the prior is negligible; on a separable handful it
stops ``T`` where the likelihood has stopped telling anything.

Threshold policies:

* ``max_f1``         the threshold with the highest defect F1 on validation.
* ``target_recall``  the *highest* threshold whose defect recall still meets the target (e.g. 0.99):
                     the most precise operating point that misses at most 1 % of defects. (Any lower
                     threshold meets the target too; the highest is the one with fewest false alarms.)

Every threshold between two neighbouring validation scores makes the same validation decisions;
the one returned is the midpoint of that gap (the largest margin on both sides), not the score of
the last defect let in, which sits on the edge and, with saturated probabilities, is 1.0 itself.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import precision_recall_curve

from inspectline.errors import ConfigError


def fit_temperature(logits: np.ndarray, labels: np.ndarray, prior_scale: float = 1.0) -> float:
    """The temperature minimising NLL of ``softmax(logits / T)`` plus a normal prior on ``log T``.

    ``logits`` is ``(N, K)``; ``prior_scale`` is the prior's standard deviation in ``log T``
    (see the module docstring).
    """
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def nll(log_t: float) -> float:
        data = torch.nn.functional.cross_entropy(logits_t / np.exp(log_t), labels_t, reduction="sum")
        return float(data) + 0.5 * (log_t / prior_scale) ** 2

    # T in [0.05, 20]: wide enough for any sane network, bounded so a degenerate split cannot run away.
    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def choose_threshold(
    y_true: np.ndarray, prob: np.ndarray, policy: str = "max_f1", target_recall: float = 0.99
) -> float:
    """Pick the operating threshold on validation probabilities (see module docstring)."""
    y_true = np.asarray(y_true, dtype=int)
    if y_true.min() == y_true.max():
        return 0.5  # one class only: nothing to trade off
    precision, recall, thresholds = precision_recall_curve(y_true, prob)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if policy == "max_f1":
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0
        )
        edge = float(thresholds[int(np.argmax(f1))])
    elif policy == "target_recall":
        meeting = thresholds[recall >= target_recall]
        edge = float(meeting.max()) if len(meeting) else float(thresholds.min())
    else:
        msg = f"threshold policy {policy!r} is not one of 'max_f1', 'target_recall'"
        raise ConfigError(msg)
    below = np.asarray(prob, dtype=np.float64)[np.asarray(prob) < edge]
    return (edge + float(below.max())) / 2 if len(below) else edge
