"""The threshold what-if: verdicts recomputed from stored probabilities, and the rates a reviewer reads."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from inspectline.errors import ConfigError
from inspectline.predictor import Predictor
from inspectline.store import VERDICTS, StoredFrame
from inspectline.whatif import DEFAULT_SWEEP, observed, sweep, sweep_arrays, verdicts, what_if, what_if_arrays

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
# (defect probability, label): three defective frames and three OK ones on both sides of 0.5
LABELLED = [(0.05, "ok"), (0.30, "defective"), (0.45, "ok"), (0.55, "defective"), (0.70, "ok"), (0.95, "defective")]


def frame(i: int, p: float, label: str | None, *, verdict: str = "OK", version: str = "v0001") -> StoredFrame:
    return StoredFrame(
        id=i,
        camera_id="cam1",
        frame_id=f"f{i}",
        line_id="line-a",
        part_id=None,
        captured_at=None,
        received_at=T0,
        verdict=verdict,
        defect_probability=p,
        confidence=max(p, 1 - p),
        threshold=0.5,
        model_version=version,
        views={"identity": p},
        content_sha256=None,
        image_sha256=None,
        image_format=None,
        label=label,
        labelled_by="ana@plant" if label else None,
        labelled_at=T0 if label else None,
    )


FRAMES = [frame(i, p, label) for i, (p, label) in enumerate(LABELLED)]


@pytest.mark.parametrize(
    ("threshold", "band", "counts", "recall", "precision", "false_reject", "unsure"),
    [
        # counts: defective judged DEFECTIVE/UNSURE/OK, ok judged DEFECTIVE/UNSURE/OK
        (0.50, 0.00, (2, 0, 1, 1, 0, 2), 2 / 3, 2 / 3, 1 / 3, 0.0),
        # the band holds 0.45 and 0.55 for review: the defective 0.55 no longer escapes nor counts as flagged
        (0.50, 0.10, (1, 1, 1, 1, 1, 1), 2 / 3, 1 / 2, 1 / 3, 2 / 6),
        (0.25, 0.00, (3, 0, 0, 2, 0, 1), 1.0, 3 / 5, 2 / 3, 0.0),
        (0.90, 0.00, (1, 0, 2, 0, 0, 3), 1 / 3, 1.0, 0.0, 0.0),
        # everything UNSURE: nothing passes as OK (recall 1), nothing is flagged (precision undefined)
        (0.50, 0.49, (0, 3, 0, 0, 3, 0), 1.0, None, 0.0, 1.0),
    ],
)
def test_what_if_table(threshold, band, counts, recall, precision, false_reject, unsure):
    result = what_if(FRAMES, threshold, band)
    assert (
        result.defective_judged_defective,
        result.defective_judged_unsure,
        result.defective_judged_ok,
        result.ok_judged_defective,
        result.ok_judged_unsure,
        result.ok_judged_ok,
    ) == counts
    assert (result.frames, result.defective_frames, result.ok_frames) == (6, 3, 3)
    assert result.recall == pytest.approx(recall)
    assert result.precision == (None if precision is None else pytest.approx(precision))
    assert result.false_reject_rate == pytest.approx(false_reject)
    assert result.unsure_share == pytest.approx(unsure)
    assert (result.threshold, result.unsure_band, result.model_versions) == (threshold, band, ("v0001",))


def test_edges_follow_the_predictors_rule():
    # p == threshold is DEFECTIVE; |p - threshold| == band is outside the band (binary-exact values)
    assert verdicts([0.5, 0.49], threshold=0.5) == ["DEFECTIVE", "OK"]
    banded = verdicts([0.75, 0.25, 0.7, 0.5], threshold=0.5, unsure_band=0.25)
    assert banded == ["DEFECTIVE", "OK", "UNSURE", "UNSURE"]
    grid = np.linspace(0.0, 1.0, 201)
    for threshold, band in [(0.5, 0.0), (0.41, 0.05), (0.2, 0.15), (0.9, 0.3)]:
        rule = SimpleNamespace(threshold=threshold, unsure_band=band)
        expected = [Predictor.verdict(rule, float(p)) for p in grid]  # the served rule itself
        assert verdicts(grid, threshold, band) == expected
    assert set(verdicts(grid, 0.5, 0.2)) <= set(VERDICTS)


def test_observed_scores_the_stored_verdicts():
    stored = ["OK", "OK", "OK", "UNSURE", "OK", "DEFECTIVE"]  # what the line said, one per LABELLED row
    judged = [frame(i, p, label, verdict=v) for (i, (p, label)), v in zip(enumerate(LABELLED), stored, strict=True)]
    result = observed(judged)
    assert (result.defective_judged_defective, result.defective_judged_unsure, result.defective_judged_ok) == (1, 1, 1)
    assert (result.ok_judged_defective, result.ok_judged_unsure, result.ok_judged_ok) == (0, 0, 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.threshold == 0.5


def test_sweep_is_one_point_per_threshold_and_recall_falls_as_the_threshold_rises():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.3
    p = np.clip(np.where(labels, rng.normal(0.7, 0.2, 400), rng.normal(0.3, 0.2, 400)), 0, 1)
    frames = [
        frame(i, float(pi), "defective" if li else "ok") for i, (pi, li) in enumerate(zip(p, labels, strict=True))
    ]
    points = sweep(frames, unsure_band=0.0)
    assert [pt.threshold for pt in points] == list(DEFAULT_SWEEP)
    recalls = [pt.recall for pt in points]
    false_rejects = [pt.false_reject_rate for pt in points]
    assert recalls == sorted(recalls, reverse=True) and recalls[0] > 0.95 and recalls[-1] < 0.2
    assert false_rejects == sorted(false_rejects, reverse=True)
    # the sweep agrees with single what-ifs, with a band too
    for pt in sweep(frames, unsure_band=0.05, thresholds=[0.3, 0.6]):
        assert pt == what_if(frames, pt.threshold, 0.05)


def test_mixed_versions_are_named_and_an_empty_window_has_no_rates():
    frames = [*FRAMES[:3], *(frame(i + 10, p, label, version="v0002") for i, (p, label) in enumerate(LABELLED[3:]))]
    assert what_if(frames, 0.5).model_versions == ("v0001", "v0002")
    empty = what_if([], 0.5, 0.1)
    assert (empty.frames, empty.recall, empty.precision, empty.false_reject_rate, empty.unsure_share) == (
        0,
        None,
        None,
        None,
        None,
    )
    assert empty.to_dict()["model_versions"] == []


@pytest.mark.parametrize(
    ("threshold", "band", "needle"),
    [(0.0, 0.0, "threshold 0.0"), (1.0, 0.0, "threshold 1.0"), (0.5, 0.5, "unsure_band 0.5"), (0.5, -0.1, "-0.1")],
)
def test_bad_operating_points_are_refused_by_name(threshold, band, needle):
    with pytest.raises(ConfigError, match=needle):
        what_if(FRAMES, threshold, band)


def test_unlabelled_frames_are_refused_by_id():
    with pytest.raises(ConfigError, match=r"frames 7 have none"):
        what_if([*FRAMES, frame(7, 0.5, None)], 0.5)


def test_plain_arrays_give_the_same_answers_and_bad_arrays_are_refused():
    labels = [1 if label == "defective" else 0 for _, label in LABELLED]
    probabilities = [p for p, _ in LABELLED]
    assert what_if_arrays(labels, probabilities, 0.5, 0.1, model_versions=("v0001",)) == what_if(FRAMES, 0.5, 0.1)
    assert sweep_arrays(labels, probabilities, 0.1, model_versions=("v0001",)) == sweep(FRAMES, 0.1)
    with pytest.raises(ConfigError, match="one length"):
        what_if_arrays(labels[:-1], probabilities, 0.5)
    with pytest.raises(ConfigError, match=r"found \[2\]"):
        what_if_arrays([2, *labels[1:]], probabilities, 0.5)
