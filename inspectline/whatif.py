"""The threshold what-if: what a different operating point would have done to labelled frames.

A quality engineer moves the threshold and the UNSURE band on the review page and reads, before
committing the new operating point, what the line would have done with the frames reviewers labelled:

* **recall**: share of defective frames that do *not* pass as OK (judged DEFECTIVE, or UNSURE and held
  for review), so widening the band can only raise it; ``1 - recall`` is the escape rate.
* **precision**: share of frames judged DEFECTIVE that are defective.
* **false-reject rate**: share of OK frames judged DEFECTIVE (scrapped or reworked for nothing).
* **UNSURE share**: share of all frames sent to a person: the review workload.

Verdicts are recomputed from each frame's stored calibrated defect probability with the rule the
predictor applies (:meth:`Predictor.verdict`): UNSURE when ``|p - threshold| < band``, else DEFECTIVE
when ``p >= threshold``, else OK. The stored verdict is what the line actually did; :func:`observed`
scores it the same way for comparison. A window that mixes model versions mixes their probabilities;
``WhatIf.model_versions`` says which are in it (filter by ``model_version`` when querying the store).

    frames = store.labelled(since=shift_start)
    what_if(frames, threshold=0.41, unsure_band=0.05).recall
    sweep(frames, unsure_band=0.05)            # one WhatIf per threshold, for a chart
    what_if_arrays(labels, probabilities, 0.41, 0.05)   # the same from two columns read by the caller

Cost: the arithmetic is numpy (a 49-point sweep of 100,000 frames is a few tens of milliseconds, see
``benchmarks/whatif_cost.py``); reading 100,000 whole ``StoredFrame`` rows is what takes time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inspectline.errors import ConfigError
from inspectline.store import StoredFrame

_BY_CODE = ("OK", "DEFECTIVE", "UNSURE")  # verdict codes 0, 1, 2 as int8 arrays use them (no torch import here)
DEFAULT_SWEEP = tuple(round(t, 2) for t in np.arange(0.02, 0.99, 0.02))


@dataclass(frozen=True)
class WhatIf:
    """Rates and counts of one operating point on a set of labelled frames (rates are None when undefined)."""

    threshold: float
    unsure_band: float
    frames: int
    defective_frames: int
    ok_frames: int
    # counts by (label, verdict); the first word is the label
    defective_judged_defective: int
    defective_judged_unsure: int
    defective_judged_ok: int
    ok_judged_defective: int
    ok_judged_unsure: int
    ok_judged_ok: int
    recall: float | None
    precision: float | None
    false_reject_rate: float | None
    unsure_share: float | None
    model_versions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model_versions": list(self.model_versions)}


def verdicts(probabilities: Sequence[float], threshold: float, unsure_band: float = 0.0) -> list[str]:
    """The verdict each probability gets at this operating point (the predictor's rule; see the docstring)."""
    return [_BY_CODE[c] for c in _codes(np.asarray(probabilities, dtype=float), threshold, unsure_band)]


def what_if(frames: Sequence[StoredFrame], threshold: float, unsure_band: float = 0.0) -> WhatIf:
    """What this operating point would have done to the labelled ``frames`` (unlabelled ones are refused)."""
    labels, probabilities, versions = _labelled(frames)
    return what_if_arrays(labels, probabilities, threshold, unsure_band, model_versions=versions)


def what_if_arrays(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    threshold: float,
    unsure_band: float = 0.0,
    *,
    model_versions: tuple[str, ...] = (),
) -> WhatIf:
    """:func:`what_if` on plain arrays (label 1 defective, 0 ok), for callers that read only those columns."""
    labels, probabilities = _arrays(labels, probabilities)
    return _score(labels, _codes(probabilities, threshold, unsure_band), threshold, unsure_band, model_versions)


def observed(frames: Sequence[StoredFrame]) -> WhatIf:
    """The same rates for the verdicts the line actually gave (``threshold`` is the frames' mean, band 0)."""
    labels, _, versions = _labelled(frames)
    judged = np.array([_BY_CODE.index(f.verdict) for f in frames], dtype=np.int8)
    mean_threshold = float(np.mean([f.threshold for f in frames])) if frames else 0.5
    return _score(labels, judged, mean_threshold, 0.0, versions)


def sweep(
    frames: Sequence[StoredFrame], unsure_band: float = 0.0, thresholds: Sequence[float] = DEFAULT_SWEEP
) -> list[WhatIf]:
    """One :class:`WhatIf` per threshold (default 0.02 to 0.98 in steps of 0.02): the what-if chart."""
    labels, probabilities, versions = _labelled(frames)
    return sweep_arrays(labels, probabilities, unsure_band, thresholds, model_versions=versions)


def sweep_arrays(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    unsure_band: float = 0.0,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    *,
    model_versions: tuple[str, ...] = (),
) -> list[WhatIf]:
    """:func:`sweep` on plain arrays (label 1 defective, 0 ok)."""
    labels, probabilities = _arrays(labels, probabilities)
    return [_score(labels, _codes(probabilities, t, unsure_band), t, unsure_band, model_versions) for t in thresholds]


def check_operating_point(threshold: float, unsure_band: float) -> None:
    """ConfigError unless ``0 < threshold < 1`` and ``0 <= unsure_band < 0.5`` (the predictor's limits)."""
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        msg = f"threshold {threshold!r} must be a number strictly between 0 and 1"
        raise ConfigError(msg)
    if not isinstance(unsure_band, (int, float)) or not 0.0 <= unsure_band < 0.5:
        msg = f"unsure_band {unsure_band!r} must be a number in [0, 0.5)"
        raise ConfigError(msg)


def _labelled(frames: Sequence[StoredFrame]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    unlabelled = [f.id for f in frames if f.label not in ("ok", "defective")]
    if unlabelled:
        shown = ", ".join(map(str, unlabelled[:10])) + (" ..." if len(unlabelled) > 10 else "")
        msg = f"the what-if needs labelled frames (label ok or defective); frames {shown} have none"
        raise ConfigError(msg)
    labels = np.array([f.label == "defective" for f in frames], dtype=int)
    probabilities = np.array([f.defect_probability for f in frames], dtype=float)
    return labels, probabilities, tuple(sorted({f.model_version for f in frames}))


def _arrays(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    labels, probabilities = np.asarray(labels, dtype=np.int64), np.asarray(probabilities, dtype=float)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        msg = f"labels {labels.shape} and probabilities {probabilities.shape} must be 1-D arrays of one length"
        raise ConfigError(msg)
    if labels.size and not np.isin(labels, (0, 1)).all():
        msg = f"labels must be 1 (defective) or 0 (ok); found {sorted(set(labels.tolist()) - {0, 1})[:5]}"
        raise ConfigError(msg)
    return labels, probabilities


def _codes(p: np.ndarray, threshold: float, unsure_band: float) -> np.ndarray:
    """Verdicts as indices into _BY_CODE: int8 codes keep a 100,000-frame sweep in numpy."""
    check_operating_point(threshold, unsure_band)
    codes = (p >= threshold).astype(np.int8)  # 0 OK, 1 DEFECTIVE
    if unsure_band:
        codes[np.abs(p - threshold) < unsure_band] = 2
    return codes


def _score(
    labels: np.ndarray, codes: np.ndarray, threshold: float, unsure_band: float, versions: tuple[str, ...]
) -> WhatIf:
    """Rates and counts of verdict ``codes`` against ``labels`` (1 defective, 0 ok)."""
    # counts[label, verdict code]: one bincount instead of six masks
    counts = np.bincount(labels * 3 + codes, minlength=6).reshape(2, 3)
    ok_row, defective_row = counts[0], counts[1]
    n_ok, n_defective = int(ok_row.sum()), int(defective_row.sum())
    flagged = int(defective_row[1] + ok_row[1])
    return WhatIf(
        threshold=float(threshold),
        unsure_band=float(unsure_band),
        frames=n_ok + n_defective,
        defective_frames=n_defective,
        ok_frames=n_ok,
        defective_judged_defective=int(defective_row[1]),
        defective_judged_unsure=int(defective_row[2]),
        defective_judged_ok=int(defective_row[0]),
        ok_judged_defective=int(ok_row[1]),
        ok_judged_unsure=int(ok_row[2]),
        ok_judged_ok=int(ok_row[0]),
        recall=_ratio(n_defective - int(defective_row[0]), n_defective),
        precision=_ratio(int(defective_row[1]), flagged),
        false_reject_rate=_ratio(int(ok_row[1]), n_ok),
        unsure_share=_ratio(int(defective_row[2] + ok_row[2]), n_ok + n_defective),
        model_versions=versions,
    )


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None
