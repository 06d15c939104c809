import numpy as np
import pytest

from inspectline.training.calibration import choose_threshold, fit_temperature
from inspectline.training.metrics import (
    best_f1,
    classification_metrics,
    expected_calibration_error,
    prediction_diversity,
)


def _sample_logits(n: int, temperature: float, seed: int = 0):
    """Logits whose *true* probabilities are softmax(logits / temperature)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 4, n)
    logits = np.stack([np.zeros(n), margin], axis=1)
    p_true = 1 / (1 + np.exp(-margin / temperature))
    labels = (rng.random(n) < p_true).astype(int)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_recovers_the_generating_temperature(true_t):
    logits, labels = _sample_logits(20000, true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    logits, labels = _sample_logits(20000, 3.0, seed=1)
    raw = 1 / (1 + np.exp(-logits[:, 1]))
    t = fit_temperature(logits, labels)
    calibrated = 1 / (1 + np.exp(-logits[:, 1] / t))
    assert expected_calibration_error(labels, calibrated) < 0.02
    assert expected_calibration_error(labels, raw) > 0.1


def test_max_f1_threshold_is_the_best_by_brute_force():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    prob = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    chosen = choose_threshold(labels, prob, "max_f1")
    best = max(classification_metrics(labels, prob, t)["f1"] for t in np.unique(prob))
    assert classification_metrics(labels, prob, chosen)["f1"] == pytest.approx(best)


def test_target_recall_threshold_is_the_highest_meeting_the_target():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    prob = np.clip(labels * 0.4 + rng.random(500) * 0.6, 0, 1)
    chosen = choose_threshold(labels, prob, "target_recall", 0.99)
    assert classification_metrics(labels, prob, chosen)["recall"] >= 0.99
    edge, higher = np.unique(prob[prob > chosen])[:2]  # same decisions as `chosen`; one defect fewer let in
    assert ((prob >= edge) == (prob >= chosen)).all()
    assert classification_metrics(labels, prob, higher)["recall"] < 0.99
    assert chosen > choose_threshold(labels, prob, "target_recall", 1.0) or chosen == prob.min()


def test_threshold_sits_mid_gap_between_neighbouring_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert choose_threshold(labels, prob, "max_f1") == pytest.approx(0.5)
    assert choose_threshold(labels, prob, "target_recall", 1.0) == pytest.approx(0.5)


def test_a_perfectly_separated_split_keeps_a_usable_temperature_and_threshold():
    """Separable validation: the plain NLL falls all the way to T's bound and saturates probabilities
    to exactly 0 and 1, which made the chosen threshold 1.0 (every frame OK but a certain one)."""
    margin = np.array([-3.0, -2.0, -1.5, -1.0, 1.0, 1.5, 2.0, 3.0])
    logits = np.stack([np.zeros_like(margin), margin], axis=1)
    labels = (margin > 0).astype(int)
    t = fit_temperature(logits, labels)
    assert 0.1 < t < 1.0, t  # sharpened, since every frame is right, but not to the bound
    prob = 1 / (1 + np.exp(-margin / t))
    assert 0.01 < prob.max() < 0.9999 or prob.max() < 1.0
    for policy in ("max_f1", "target_recall"):
        threshold = choose_threshold(labels, prob, policy, 0.99)
        assert prob[labels == 0].max() < threshold < prob[labels == 1].min(), (policy, threshold)
        assert threshold < 1.0


def test_metrics_are_none_when_undefined_and_diversity_detects_one_class():
    m = classification_metrics(np.zeros(10, int), np.linspace(0, 0.4, 10))
    assert m["roc_auc"] is None and m["accuracy"] == 1.0
    assert prediction_diversity(np.array([1, 1, 1, 0])) == 0.75
    assert prediction_diversity(np.zeros(5)) == 1.0


def test_best_f1_is_the_f1_at_the_max_f1_threshold():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    prob = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    threshold = choose_threshold(labels, prob, "max_f1")
    assert best_f1(labels, prob) == pytest.approx(classification_metrics(labels, prob, threshold)["f1"])
    assert best_f1(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.0
