"""Uncertainty of the scores: bootstrap confidence intervals over test items, paired for differences.

Every score is a mean of per-item scores (0/1 accuracy, per-item F1), so resampling items with
replacement gives its sampling distribution. A gain compares two models on the *same* items: the
per-item differences are resampled together (paired), which removes the variance of item difficulty
shared by both models. The p-value tests "no difference" by how often a resampled gain, shifted to
mean 0, is at least as far from 0 as the observed one (two-sided). Seeded: the same predictions give
the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
_CHUNK = 500  # resamples drawn at once (5,010 items x 500 indices stays small)


@dataclass(frozen=True)
class Interval:
    value: float  # the observed mean (percent)
    lo: float
    hi: float
    n: int

    def dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Difference(Interval):
    p_value: float

    @property
    def significant(self) -> bool:
        return not (self.lo <= 0.0 <= self.hi)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        out[start : start + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def _bounds(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                 confidence: float = CONFIDENCE, scale: float = 100.0) -> Interval:
    """Percentile bootstrap interval of the mean per-item score, in percent (`scale`)."""
    values = np.asarray(scores, dtype=float) * scale
    if len(values) == 0:
        raise ValueError("no items to score")
    lo, hi = _bounds(_resampled_means(values, resamples, seed), confidence)
    return Interval(round(float(values.mean()), 4), round(lo, 4), round(hi, 4), len(values))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE, scale: float = 100.0) -> Difference:
    """Interval and two-sided p-value of mean(b - a) over the same items (b: the new model, a: the baseline)."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired scores need the same items: {len(a_arr)} vs {len(b_arr)}")
    if len(a_arr) == 0:
        raise ValueError("no items to compare")
    diff = (b_arr - a_arr) * scale
    observed = float(diff.mean())
    means = _resampled_means(diff, resamples, seed)
    lo, hi = _bounds(means, confidence)
    # Null distribution: the resampled gains moved to mean 0.
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    p = (extreme + 1) / (resamples + 1)
    return Difference(round(observed, 4), round(lo, 4), round(hi, 4), len(diff), round(min(1.0, p), 6))
