"""Parity between an exported engine and the checkpoint it came from: the numbers, the rule, the table.

Both sides are :class:`~inspectline.predictor.Predictor` objects on the same model card, so the
preprocessing, flip views, temperature and threshold are identical and only the engine differs.
Every export is measured on two sets of frames:

* the version's **test split**: verdict agreement with the checkpoint, max and mean |Δ defect
  probability|, ROC-AUC and defect recall of each and their change, and prediction diversity (the
  share of the most common verdict: 1.0 means every frame got the same verdict);
* **random inputs** (noise and smooth random fields, through the same preprocessing): the same
  numbers without labels, to prove the export still responds to its input and has not collapsed.

:func:`parity_problems` is the rule: agreement on the test split at least the bound (default 99 %
for INT8, 99.9 % otherwise), every output finite, and no collapse on either set (a single verdict
where the checkpoint gives several, or a constant output). :func:`parity_table` prints the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import roc_auc_score

from inspectline.predictor import Predictor

DEFAULT_BOUNDS = {"int8": 0.99, "fp32": 0.999, "fp16": 0.999, "bf16": 0.999}
RANDOM_FRAMES = 64


class SetParity(BaseModel):
    """How an export's verdicts on one set of frames compare with the checkpoint's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: int
    agreement: float  # share of frames with the same verdict (OK/DEFECTIVE at the threshold)
    max_abs_dp: float  # largest |Δ defect probability|
    mean_abs_dp: float
    diversity_reference: float  # share of the most common verdict, checkpoint
    diversity: float  # the same for the export
    spread: float  # standard deviation of the export's defect probabilities (0: a constant output)
    spread_reference: float
    finite: bool
    roc_auc_reference: float | None = None  # with labels only
    roc_auc: float | None = None
    roc_auc_change: float | None = None
    recall_reference: float | None = None
    recall: float | None = None
    recall_change: float | None = None


class ParityReport(BaseModel):
    """Parity of one export on the test split and on random inputs, with the bound it was held to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bound: float
    test: SetParity
    random: SetParity
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems


def default_bound(precision: str) -> float:
    return DEFAULT_BOUNDS.get(precision, DEFAULT_BOUNDS["fp32"])


def measure_parity(
    reference: Predictor,
    candidate: Predictor,
    test_frames: torch.Tensor,
    test_labels: Sequence[int],
    *,
    bound: float,
    random_frames: torch.Tensor | None = None,
    batch_size: int = 32,
) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on preprocessed test frames ``(N, C, H, W)`` and random inputs."""
    if random_frames is None:
        random_frames = random_inputs(reference, RANDOM_FRAMES)
    labels = np.asarray(test_labels, dtype=int)
    sets = {}
    for name, frames, truth in (("test", test_frames, labels), ("random", random_frames, None)):
        ref = _probabilities(reference, frames, batch_size)
        got = _probabilities(candidate, frames, batch_size)
        sets[name] = compare(ref, got, reference.threshold, truth)
    report = ParityReport(bound=bound, test=sets["test"], random=sets["random"])
    return report.model_copy(update={"problems": tuple(parity_problems(report))})


def compare(
    reference: np.ndarray, candidate: np.ndarray, threshold: float, labels: np.ndarray | None = None
) -> SetParity:
    """The parity numbers of two arrays of defect probabilities for the same frames."""
    finite = bool(np.isfinite(candidate).all())
    got = np.nan_to_num(candidate, nan=-1.0)  # a NaN never agrees with anything
    ref_verdicts, verdicts = reference >= threshold, got >= threshold
    delta = np.abs(got - reference)
    fields = {
        "frames": len(reference),
        "agreement": float((ref_verdicts == verdicts).mean() if finite else 0.0),
        "max_abs_dp": float(delta.max()),
        "mean_abs_dp": float(delta.mean()),
        "diversity_reference": _diversity(ref_verdicts),
        "diversity": _diversity(verdicts),
        "spread_reference": float(reference.std()),
        "spread": float(got.std()),
        "finite": finite,
    }
    if labels is not None and len(set(labels.tolist())) == 2:
        auc_ref, auc = float(roc_auc_score(labels, reference)), float(roc_auc_score(labels, got))
        rec_ref, rec = _recall(labels, ref_verdicts), _recall(labels, verdicts)
        fields |= {
            "roc_auc_reference": auc_ref,
            "roc_auc": auc,
            "roc_auc_change": auc - auc_ref,
            "recall_reference": rec_ref,
            "recall": rec,
            "recall_change": rec - rec_ref,
        }
    return SetParity(**fields)


def parity_problems(report: ParityReport) -> list[str]:
    """Why an export fails parity (empty: it passes). The rule is in the module docstring."""
    problems = []
    if report.test.agreement < report.bound:
        problems.append(
            f"verdict agreement on the test split {report.test.agreement:.2%} is below the bound {report.bound:.2%}"
        )
    for name, s in (("test split", report.test), ("random inputs", report.random)):
        if not s.finite:
            problems.append(f"non-finite outputs on the {name}")
        if s.diversity == 1.0 and s.diversity_reference < 1.0:
            problems.append(f"one verdict for every frame of the {name}, where the checkpoint gives several")
        if s.spread < 1e-6 <= s.spread_reference:
            problems.append(f"a constant output on the {name}: it no longer responds to its input")
    return problems


def random_inputs(predictor: Predictor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` random frames through ``predictor``'s preprocessing: uniform noise and smooth fields."""
    rng = np.random.default_rng(seed)
    side = predictor.card.preprocessing.image_size
    channels = predictor.card.preprocessing.channels
    frames = []
    for i in range(count):
        noise = rng.uniform(0, 255, (side, side, channels)).astype(np.float32)
        if i % 2:  # a smooth field at a random brightness and contrast, more like a real cell
            noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=side / 16).reshape(side, side, channels)
            noise = (noise - noise.mean()) * rng.uniform(1, 6) + rng.uniform(40, 215)
        frames.append(predictor.preprocess(np.clip(noise, 0, 255).astype(np.uint8)))
    return torch.stack(frames)


def parity_table(rows: dict[str, ParityReport]) -> str:
    """A Markdown table, one row per export and set of frames."""
    lines = [
        "| export | frames | agreement | bound | max abs dp | mean abs dp | ROC-AUC (change) | recall (change) "
        "| top verdict share (ckpt) | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, report in rows.items():
        result = "pass" if report.passed else "FAIL: " + "; ".join(report.problems)
        for name, s in (("test", report.test), ("random", report.random)):
            lines.append(
                f"| {label} {name} | {s.frames} | {s.agreement:.2%} | {report.bound:.1%} | {s.max_abs_dp:.4f} "
                f"| {s.mean_abs_dp:.4f} | {_with_change(s.roc_auc, s.roc_auc_change)} "
                f"| {_with_change(s.recall, s.recall_change)} | {s.diversity:.2f} ({s.diversity_reference:.2f}) "
                f"| {result if name == 'test' else ''} |"
            )
    return "\n".join(lines)


def _probabilities(predictor: Predictor, frames: torch.Tensor, batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(frames), batch_size):
        view_logits = predictor.forward(frames[start : start + batch_size]).view_logits
        out.append(predictor.calibrated_probabilities(view_logits)[0])
    return np.concatenate(out).astype(np.float64)


def _diversity(verdicts: np.ndarray) -> float:
    return float(max(verdicts.mean(), 1 - verdicts.mean())) if len(verdicts) else 1.0


def _recall(labels: np.ndarray, verdicts: np.ndarray) -> float:
    defective = labels == 1
    return float(verdicts[defective].mean()) if defective.any() else math.nan


def _with_change(value: float | None, change: float | None) -> str:
    return "-" if value is None or change is None else f"{value:.4f} ({change:+.4f})"
