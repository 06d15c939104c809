"""The parity numbers and the pass rule, on probabilities whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from inspectline.parity import ParityReport, compare, default_bound, parity_problems, parity_table

REFERENCE = np.array([0.1, 0.2, 0.45, 0.55, 0.8, 0.9, 0.3, 0.7])
LABELS = np.array([0, 0, 0, 1, 1, 1, 0, 1])


def test_identical_outputs_agree_fully():
    s = compare(REFERENCE, REFERENCE.copy(), 0.5, LABELS)
    assert s.agreement == 1.0 and s.max_abs_dp == 0.0 and s.mean_abs_dp == 0.0
    assert s.roc_auc == s.roc_auc_reference == 1.0 and s.roc_auc_change == 0.0
    assert s.recall == s.recall_reference == 1.0 and s.diversity == 0.5 and s.finite


def test_numbers_for_a_shifted_export():
    got = REFERENCE + np.array([0, 0, 0.1, -0.1, 0, 0, 0, 0])  # two frames cross the threshold
    s = compare(REFERENCE, got, 0.5, LABELS)
    assert s.agreement == pytest.approx(6 / 8)
    assert s.max_abs_dp == pytest.approx(0.1) and s.mean_abs_dp == pytest.approx(0.2 / 8)
    assert s.recall == pytest.approx(0.75) and s.recall_change == pytest.approx(-0.25)
    assert s.roc_auc < 1.0 and s.roc_auc_change == pytest.approx(s.roc_auc - 1.0)


def _report(agreement_frames: int, candidate_random: np.ndarray, bound: float = 0.99) -> ParityReport:
    got = REFERENCE.copy()
    got[: 8 - agreement_frames] = 1 - got[: 8 - agreement_frames]
    random_ref = np.linspace(0.2, 0.8, 16)
    return ParityReport(
        bound=bound, test=compare(REFERENCE, got, 0.5, LABELS), random=compare(random_ref, candidate_random, 0.5)
    )


@pytest.mark.parametrize(
    ("agreeing", "random_out", "bound", "problems"),
    [
        (8, np.linspace(0.2, 0.8, 16), 0.99, []),
        (7, np.linspace(0.2, 0.8, 16), 0.99, ["verdict agreement on the test split 87.50% is below the bound 99.00%"]),
        (7, np.linspace(0.2, 0.8, 16), 0.85, []),
        (8, np.full(16, 0.3), 0.99, ["one verdict for every frame of the random inputs", "a constant output"]),
        (8, np.full(16, np.nan), 0.99, ["non-finite outputs on the random inputs", "one verdict", "constant"]),
    ],
)
def test_pass_rule(agreeing, random_out, bound, problems):
    report = _report(agreeing, random_out, bound)
    found = parity_problems(report)
    assert len(found) == len(problems)
    for expected, got in zip(problems, found, strict=True):
        assert expected in got


def test_default_bounds_and_table():
    assert default_bound("int8") == 0.99 and default_bound("fp32") == default_bound("bf16") == 0.999
    report = _report(7, np.linspace(0.2, 0.8, 16))
    report = report.model_copy(update={"problems": tuple(parity_problems(report))})
    table = parity_table({"v0001 openvino-int8": report})
    assert "| v0001 openvino-int8 test | 8 | 87.50% | 99.0% |" in table
    assert "FAIL: verdict agreement" in table and "| v0001 openvino-int8 random | 16 |" in table
