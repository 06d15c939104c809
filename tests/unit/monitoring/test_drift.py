from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectline.monitoring.drift import (
    SIGNALS,
    DriftDetector,
    DriftReference,
    build_reference,
    evaluate_window,
    image_statistics,
)
from tests.helpers import make_cell


def _frame(seed: int = 0) -> np.ndarray:
    return make_cell(np.random.default_rng(seed), defective=False, side=96)


def test_image_statistics_respond_to_the_shifts_they_watch():
    frame = _frame()
    base = image_statistics(frame)
    dark = image_statistics((frame * 0.5).astype(np.uint8))
    blurred = image_statistics(cv2.GaussianBlur(frame, (0, 0), 2.0))
    burnt = image_statistics(np.clip(frame.astype(int) + 120, 0, 255).astype(np.uint8))
    assert dark[0] < base[0] * 0.6 and dark[1] < base[1]  # brightness, contrast
    assert blurred[2] < base[2] * 0.5  # focus
    assert burnt[3] > 0.5 > base[3]  # clipping
    # the same scene in any layout gives the same statistics
    np.testing.assert_allclose(image_statistics(np.dstack([frame] * 3)), base, atol=1e-3)
    np.testing.assert_allclose(image_statistics(frame.astype(np.uint16) << 8), base, atol=1e-6)


def _reference(rng: np.random.Generator, n: int = 400, dim: int = 12) -> tuple[DriftReference, np.ndarray]:
    embeddings = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    reference = build_reference(
        rng.beta(2, 5, n),
        rng.normal([0.5, 0.2, 0.01, 0.0], [0.05, 0.02, 0.002, 0.001], (n, 4)),
        embeddings,
        0.5,
        n_components=4,
    )
    return reference, embeddings


def _window(
    rng: np.random.Generator,
    reference: DriftReference,
    n: int,
    *,
    prob_shift: float = 0.0,
    brightness_shift: float = 0.0,
):
    probs = np.clip(rng.beta(2, 5, n) + prob_shift, 0, 1)
    stats = rng.normal([0.5 + brightness_shift, 0.2, 0.01, 0.0], [0.05, 0.02, 0.002, 0.001], (n, 4))
    components = rng.normal(size=(n, reference.components.shape[1])) * reference.components.std(axis=0)
    return probs, stats, components


def test_unshifted_windows_rarely_alarm_and_shifted_ones_do():
    rng = np.random.default_rng(0)
    reference, _ = _reference(rng)
    alarms = sum(evaluate_window(reference, *_window(rng, reference, 200), alpha=0.05).alarm for _ in range(200))
    assert alarms / 200 <= 0.05
    shifted = evaluate_window(reference, *_window(rng, reference, 200, prob_shift=0.2), alpha=0.01)
    assert shifted.alarms["output"] and shifted.scores["output"] > 0.3
    darker = evaluate_window(reference, *_window(rng, reference, 200, brightness_shift=-0.1), alpha=0.01)
    assert darker.alarms["brightness"] and not darker.alarms["focus"]
    assert set(darker.p_values) == set(SIGNALS) and all(0 <= p <= 1 for p in darker.p_values.values())


def test_defect_rate_test_uses_the_reference_rate():
    rng = np.random.default_rng(1)
    reference, _ = _reference(rng)
    probs, stats, comps = _window(rng, reference, 200)
    flagged = probs.copy()
    flagged[:120] = 0.9  # 60 % DEFECTIVE at threshold 0.5 against a reference of ~11 %
    report = evaluate_window(reference, flagged, stats, comps, alpha=0.01)
    assert report.alarms["defect_rate"] and report.scores["defect_rate"] > 3


def test_detector_evaluates_only_full_windows_every_interval():
    rng = np.random.default_rng(2)
    reference, embeddings = _reference(rng)
    detector = DriftDetector(reference, window=50, interval=10, alpha=0.01)
    reports = [
        detector.update(0.2, np.array([0.5, 0.2, 0.01, 0.0]), embeddings[i % len(embeddings)]) for i in range(80)
    ]
    evaluated = [i + 1 for i, r in enumerate(reports) if r is not None]
    assert evaluated == [50, 60, 70, 80]
    assert len(detector) == 50 and detector.last is reports[-1]
    with pytest.raises(ValueError, match="window"):
        DriftDetector(reference, window=5)


def test_reference_round_trips_without_pickle(tmp_path: Path):
    reference, embeddings = _reference(np.random.default_rng(3))
    reference.save(tmp_path / "ref.npz")
    loaded = DriftReference.load(tmp_path / "ref.npz")
    np.testing.assert_allclose(loaded.project(embeddings[:5]), reference.project(embeddings[:5]))
    assert loaded.defect_rate == reference.defect_rate and loaded.components.shape == (200, 4)
    np.testing.assert_allclose(loaded.components, reference.components)


def test_embedding_components_are_fitted_on_one_half_and_compared_on_the_other():
    """Components fitted on the frames they are compared with have inflated variance: hold half out."""
    reference, embeddings = _reference(np.random.default_rng(4))
    projected = reference.project(embeddings)  # (400, 4)
    # which frames are the stored comparison half: their projections are the stored components
    compared = [int(np.argmin(np.abs(projected - row).sum(axis=1))) for row in reference.components]
    np.testing.assert_allclose(projected[compared], reference.components, atol=1e-9)
    fitted = sorted(set(range(400)) - set(compared))
    assert len(compared) == len(fitted) == 200
    np.testing.assert_allclose(reference.pca_mean, embeddings[fitted].mean(axis=0))  # the PCA saw only the other half
    assert len(reference.probabilities) == len(reference.statistics) == 400  # nothing fitted there: every frame


def test_defect_rate_allows_for_the_reference_being_a_sample():
    """6 of 60 reference frames flagged (10 %) and 40 of 200 in the window (20 %): a 60-frame reference could
    show that by chance (Fisher p ~ 0.08), so no alarm; a binomial test against an exact 10 % would alarm
    (p ~ 3e-5). Four times the reference share does alarm."""
    rng = np.random.default_rng(5)
    n = 60
    probabilities = np.where(np.arange(n) < 6, 0.9, 0.1)
    reference = build_reference(probabilities, rng.normal(0.5, 0.05, (n, 4)), rng.normal(size=(n, 6)), 0.5, 3)
    _, stats, comps = _window(rng, reference, 200)
    twice = evaluate_window(reference, np.where(np.arange(200) < 40, 0.9, 0.1), stats, comps, alpha=0.01)
    assert not twice.alarms["defect_rate"] and twice.scores["defect_rate"] == pytest.approx(2.0)
    four = evaluate_window(reference, np.where(np.arange(200) < 80, 0.9, 0.1), stats, comps, alpha=0.01)
    assert four.alarms["defect_rate"]
