"""Drift detection: does what the cameras see still look like what the model was trained on?

At training time :func:`build_reference` stores, from held-out frames (the validation split):

* the calibrated defect probabilities the model gives them;
* image statistics per frame (:func:`image_statistics`): brightness, contrast, focus (variance of
  the Laplacian) and the share of clipped pixels;
* the penultimate-layer embeddings, reduced to a few principal components. The PCA is fitted on
  one half of the frames and the reference components are the *other* half projected: components
  fitted on the very sample they are compared against have inflated variance along the fitted
  directions, which made unshifted windows alarm more often than ``alpha`` (measured: 1.3 % of
  windows at alpha 1 %, all on the embedding signal);
* the share of frames the model flags DEFECTIVE at its threshold.

Online, a :class:`DriftDetector` per line and camera keeps a sliding window of the same quantities
and, every ``interval`` frames once the window is full, runs two-sample tests against the reference:
Kolmogorov-Smirnov on the model's output (the black-box shift detection that worked best in
Rabanser et al., "Failing Loudly", NeurIPS 2019), on each image statistic and on each embedding
component, and Fisher's exact test of the window's defect rate against the reference's. (The
reference rate is itself estimated from a few hundred frames: a binomial test that took it as
exact raised too many alarms.)

Every test of a window is Bonferroni-corrected for the total number of tests in that window, so
the chance that an unshifted window raises *any* alarm stays at or below ``alpha``. A signal
alarms when its corrected p-value is below ``alpha``; a family (image statistics, embedding) reports
its smallest corrected p-value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import fisher_exact, ks_2samp
from sklearn.decomposition import PCA

from inspectline.imaging import to_model_image

STAT_NAMES = ("brightness", "contrast", "focus", "clipping")
SIGNALS = ("output", *STAT_NAMES, "embedding", "defect_rate")
_STATS_SIZE = 128  # statistics are taken at a fixed size, so they do not depend on camera resolution


def image_statistics(frame: np.ndarray) -> np.ndarray:
    """``[brightness, contrast, focus, clipping]`` of a decoded frame (any layout ``decode_image`` returns).

    Brightness and contrast are the mean and standard deviation in [0, 1]; focus is the variance of
    the Laplacian (it drops when a lens defocuses or vibrates); clipping is the share of pixels at
    the ends of the range (over- or under-exposure).
    """
    gray = cv2.resize(to_model_image(frame, "gray")[:, :, 0], (_STATS_SIZE, _STATS_SIZE), interpolation=cv2.INTER_AREA)
    values = gray.astype(np.float32) / 255.0
    focus = float(cv2.Laplacian(values, cv2.CV_32F).var())
    clipped = float(((gray <= 2) | (gray >= 253)).mean())
    return np.array([values.mean(), values.std(), focus, clipped], dtype=np.float64)


@dataclass(frozen=True)
class DriftReference:
    """Held-out reference distributions stored with a model version (``drift_reference.npz``)."""

    probabilities: np.ndarray  # (N,)
    statistics: np.ndarray  # (N, 4)
    components: np.ndarray  # (N, k) embeddings projected on the principal components
    pca_mean: np.ndarray  # (D,)
    pca_basis: np.ndarray  # (k, D)
    defect_rate: float
    threshold: float

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings ``(M, D)`` -> components ``(M, k)``."""
        return (np.asarray(embeddings, dtype=np.float64) - self.pca_mean) @ self.pca_basis.T

    def save(self, path: Path) -> None:
        np.savez(
            path,
            probabilities=self.probabilities,
            statistics=self.statistics,
            components=self.components,
            pca_mean=self.pca_mean,
            pca_basis=self.pca_basis,
            defect_rate=self.defect_rate,
            threshold=self.threshold,
        )

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                probabilities=data["probabilities"],
                statistics=data["statistics"],
                components=data["components"],
                pca_mean=data["pca_mean"],
                pca_basis=data["pca_basis"],
                defect_rate=float(data["defect_rate"]),
                threshold=float(data["threshold"]),
            )


def build_reference(
    probabilities: np.ndarray,
    statistics: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    n_components: int = 8,
    *,
    seed: int = 0,
) -> DriftReference:
    """Fit the reference from held-out frames' outputs, statistics and embeddings.

    The embeddings are split at random in two halves: the PCA is fitted on one, the stored reference
    components are the other projected (see the module docstring). Outputs and image statistics
    involve no fitting and keep every frame.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(embeddings))
    fit_part, compare_part = order[: len(order) // 2], order[len(order) // 2 :]
    if len(fit_part) < 2:  # too few frames to hold any out: fit and compare on all of them
        fit_part = compare_part = order
    k = max(1, min(n_components, embeddings.shape[1], len(fit_part) - 1))
    pca = PCA(n_components=k, random_state=0).fit(embeddings[fit_part])
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return DriftReference(
        probabilities=probabilities,
        statistics=np.asarray(statistics, dtype=np.float64),
        components=pca.transform(embeddings[np.sort(compare_part)]),
        pca_mean=pca.mean_,
        pca_basis=pca.components_,
        defect_rate=float((probabilities >= threshold).mean()),
        threshold=float(threshold),
    )


@dataclass(frozen=True)
class DriftReport:
    """One evaluated window: per signal a score (KS statistic or rate ratio), a corrected p-value and an alarm."""

    frames: int
    scores: dict[str, float]
    p_values: dict[str, float]
    alarms: dict[str, bool]

    @property
    def alarm(self) -> bool:
        return any(self.alarms.values())


class DriftDetector:
    """Sliding-window two-sample tests against a :class:`DriftReference`, for one camera."""

    def __init__(self, reference: DriftReference, *, window: int = 200, interval: int = 50, alpha: float = 0.01):
        if window < 10 or interval < 1:
            msg = f"drift window {window} must be >= 10 frames and interval {interval} >= 1"
            raise ValueError(msg)
        self.reference = reference
        self.window, self.interval, self.alpha = window, interval, alpha
        self._probs: deque[float] = deque(maxlen=window)
        self._stats: deque[np.ndarray] = deque(maxlen=window)
        self._components: deque[np.ndarray] = deque(maxlen=window)
        self._since_eval = 0
        self.last: DriftReport | None = None

    def __len__(self) -> int:
        return len(self._probs)

    def update(self, probability: float, statistics: np.ndarray, embedding: np.ndarray) -> DriftReport | None:
        """Add one frame; returns a report when a window was evaluated."""
        self._probs.append(float(probability))
        self._stats.append(np.asarray(statistics, dtype=np.float64))
        self._components.append(self.reference.project(np.asarray(embedding)[None, :])[0])
        self._since_eval += 1
        if len(self._probs) < self.window or self._since_eval < self.interval:
            return None
        self._since_eval = 0
        self.last = evaluate_window(
            self.reference, np.array(self._probs), np.array(self._stats), np.array(self._components), self.alpha
        )
        return self.last


def evaluate_window(
    reference: DriftReference, probabilities: np.ndarray, statistics: np.ndarray, components: np.ndarray, alpha: float
) -> DriftReport:
    """All tests of one window against the reference, Bonferroni-corrected over every test run."""
    raw: dict[str, float] = {}
    scores: dict[str, float] = {}
    ks = ks_2samp(probabilities, reference.probabilities)
    raw["output"], scores["output"] = ks.pvalue, ks.statistic
    for i, name in enumerate(STAT_NAMES):
        ks = ks_2samp(statistics[:, i], reference.statistics[:, i])
        raw[name], scores[name] = ks.pvalue, ks.statistic
    component_p = []
    component_d = []
    for j in range(components.shape[1]):
        ks = ks_2samp(components[:, j], reference.components[:, j])
        component_p.append(ks.pvalue)
        component_d.append(ks.statistic)
    flagged = int((probabilities >= reference.threshold).sum())
    ref_flagged = int((reference.probabilities >= reference.threshold).sum())
    table = [[flagged, len(probabilities) - flagged], [ref_flagged, len(reference.probabilities) - ref_flagged]]
    raw["defect_rate"] = fisher_exact(table).pvalue
    rate = max(reference.defect_rate, 1e-6)  # the score is a ratio: a reference of 0 % must not divide by zero
    scores["defect_rate"] = (flagged / len(probabilities)) / rate
    n_tests = len(raw) + len(component_p)
    p_values = {name: min(1.0, p * n_tests) for name, p in raw.items()}
    p_values["embedding"] = min(1.0, min(component_p) * n_tests)
    scores["embedding"] = max(component_d)
    ordered = {name: p_values[name] for name in SIGNALS}
    return DriftReport(
        frames=len(probabilities),
        scores={name: float(scores[name]) for name in SIGNALS},
        p_values=ordered,
        alarms={name: bool(p < alpha) for name, p in ordered.items()},
    )


@dataclass(frozen=True)
class FrameFeatures:
    """What drift detection sees of a set of frames: model outputs, image statistics, embeddings."""

    probabilities: np.ndarray  # (N,)
    statistics: np.ndarray  # (N, 4)
    embeddings: np.ndarray  # (N, D)

    def __len__(self) -> int:
        return len(self.probabilities)


def frame_features(predictor, frames: Sequence[np.ndarray], batch_size: int = 32) -> FrameFeatures:
    """Run a :class:`~inspectline.predictor.Predictor` over decoded frames, as the service does."""
    probabilities, statistics, embeddings = [], [], []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        for frame, prediction in zip(chunk, predictor.predict(chunk), strict=True):
            probabilities.append(prediction.defect_probability)
            statistics.append(image_statistics(frame))
            embeddings.append(prediction.embedding)
    return FrameFeatures(np.array(probabilities), np.array(statistics), np.array(embeddings))


def reference_from_frames(
    predictor, frames: Sequence[np.ndarray], batch_size: int = 32, n_components: int = 8
) -> DriftReference:
    """Build a reference from held-out frames (the validation split at training time)."""
    f = frame_features(predictor, frames, batch_size)
    return build_reference(f.probabilities, f.statistics, f.embeddings, predictor.threshold, n_components)


def false_alarm_rate(
    reference: DriftReference, clean: FrameFeatures, *, window: int, alpha: float, trials: int = 300, seed: int = 0
) -> tuple[float, dict[str, float]]:
    """Share of windows of unshifted frames (random draws) that raise any alarm, and per signal."""
    rng = np.random.default_rng(seed)
    components = reference.project(clean.embeddings)
    any_alarm = 0
    per_signal = dict.fromkeys(SIGNALS, 0)
    for _ in range(trials):
        idx = rng.choice(len(clean), size=window, replace=len(clean) < window)
        report = evaluate_window(reference, clean.probabilities[idx], clean.statistics[idx], components[idx], alpha)
        any_alarm += report.alarm
        for name, fired in report.alarms.items():
            per_signal[name] += fired
    return any_alarm / trials, {name: n / trials for name, n in per_signal.items()}


def detection_delays(
    reference: DriftReference,
    clean: FrameFeatures,
    shifted: FrameFeatures,
    *,
    window: int,
    interval: int,
    alpha: float,
    trials: int = 10,
    seed: int = 0,
) -> list[int | None]:
    """Frames after a shift starts until a detector raises an alarm (None: not within two windows).

    Each trial fills a detector's window with unshifted frames, then streams shifted frames in a
    random order.
    """
    rng = np.random.default_rng(seed)
    delays: list[int | None] = []
    for _ in range(trials):
        detector = DriftDetector(reference, window=window, interval=interval, alpha=alpha)
        for i in rng.choice(len(clean), size=window, replace=len(clean) < window):
            detector.update(clean.probabilities[i], clean.statistics[i], clean.embeddings[i])
        delay = None
        for n, i in enumerate(rng.choice(len(shifted), size=2 * window, replace=len(shifted) < 2 * window), start=1):
            report = detector.update(shifted.probabilities[i], shifted.statistics[i], shifted.embeddings[i])
            if report is not None and report.alarm:
                delay = n
                break
        delays.append(delay)
    return delays
