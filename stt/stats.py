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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for a family of comparisons (controls the family-wise error
    rate without assuming independence). The i-th smallest p is multiplied by (m - i), running maximum,
    capped at 1; returned in the input's order."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [round(float(v), 6) for v in adjusted]


@dataclass(frozen=True)
class SeededInterval(Interval):
    """A score over training seeds and test items: the mean over seeds, a two-level bootstrap interval
    (seeds resampled, and the test items resampled once for all of them: every seed was scored on the same
    items, so their sampling is shared, not averaged away) and the standard deviation of the seeds' means."""

    seeds: int
    seed_sd: float
    per_seed: tuple[float, ...]


@dataclass(frozen=True)
class SeededDifference(SeededInterval, Difference):
    """A gain over seeds and items: a Difference (p-value, significance) with the seeds' spread."""


def _two_level_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """values: seeds x items, every seed scored on the same items (a crossed design). Each resample draws
    seeds with replacement and one set of items with replacement, used for every drawn seed, and averages.
    Drawing items anew for each seed would shrink the items' share of the variance by the number of seeds,
    as if each seed had its own test set. One seed: the item bootstrap."""
    rng = np.random.default_rng(seed)
    s, n = values.shape
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        seeds = rng.integers(0, s, size=(k, s))
        items = rng.integers(0, n, size=(k, n))
        out[start : start + k] = values[seeds[:, :, None], items[:, None, :]].mean(axis=(1, 2))
    return out


def two_level_variance(ms_seed: float, ms_item: float, ms_res: float, seeds: int, items: int) -> float:
    """The variance of `_two_level_means` over its resamples, from the two-way ANOVA mean squares of a seeds x
    items matrix: the spread of the bootstrap test that decides a seeded gain, which planning must use. Each
    resample is mu + the mean of S drawn seed effects + the mean of N drawn item effects + the mean of the S x N
    drawn residuals, the three uncorrelated (the residuals sum to 0 along every row and column), so

        (S - 1) / S^2 * MS_seed / N  +  (N - 1) / N^2 * MS_item / S  +  (S - 1)(N - 1) / (S N)^2 * MS_res.

    Under the random-effects model the residual counts almost 1 + 2(S - 1)/S times where the sampling variance
    of the mean counts it once (2.3 times at 3 seeds): with few seeds the test is wider than the ANOVA SE."""
    s, n = seeds, items
    return (s - 1) / s**2 * ms_seed / n + (n - 1) / n**2 * ms_item / s + (s - 1) * (n - 1) / (s * n) ** 2 * ms_res


def bootstrap_test_power(effect: float, se: float, sd: float, alpha: float) -> float:
    """Power of a two-sided test that rejects when |gain| > z * `sd` (the bootstrap's spread, SD*) while the
    measured gain is normal around `effect` with SD `se` (its sampling SE): the seeded bootstrap test's power.
    With sd = se it is the usual normal power."""
    from scipy import stats

    z = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf((effect - z * sd) / se) + stats.norm.cdf((-effect - z * sd) / se))


def _seeded(values: np.ndarray) -> tuple[float, float, tuple[float, ...]]:
    per_seed = values.mean(axis=1)
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
    return float(per_seed.mean()), sd, tuple(round(float(v), 4) for v in per_seed)


def seeded_ci(scores: Sequence[Sequence[float]], resamples: int = RESAMPLES, seed: int = SEED,
              confidence: float = CONFIDENCE, scale: float = 100.0) -> SeededInterval:
    """Two-level percentile bootstrap interval of the mean score, in percent. scores: one row per training
    seed, the same items in every row."""
    values = np.asarray(scores, dtype=float) * scale
    if values.ndim != 2 or values.size == 0:
        raise ValueError("scores must be seeds x items, non-empty")
    mean, sd, per_seed = _seeded(values)
    lo, hi = _bounds(_two_level_means(values, resamples, seed), confidence)
    return SeededInterval(round(mean, 4), round(lo, 4), round(hi, 4), values.shape[1], values.shape[0],
                          round(sd, 4), per_seed)


def seeded_paired(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = RESAMPLES,
                  seed: int = SEED, confidence: float = CONFIDENCE, scale: float = 100.0) -> SeededDifference:
    """mean(b - a) over seeds and items, paired on both: seed k of b against seed k of a (the same data order
    and initialisation seed), item i against item i. Two-level bootstrap of the differences (seeds, and the
    shared items); two-sided p-value from the resampled gains moved to mean 0."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 2 or a_arr.size == 0:
        raise ValueError(f"paired scores need the same seeds and items: {a_arr.shape} vs {b_arr.shape}")
    diff = (b_arr - a_arr) * scale
    mean, sd, per_seed = _seeded(diff)
    means = _two_level_means(diff, resamples, seed)
    lo, hi = _bounds(means, confidence)
    extreme = int(np.sum(np.abs(means - mean) >= abs(mean) - 1e-12))
    p = min(1.0, (extreme + 1) / (resamples + 1))
    return SeededDifference(value=round(mean, 4), lo=round(lo, 4), hi=round(hi, 4), n=diff.shape[1],
                            p_value=round(p, 6), seeds=diff.shape[0], seed_sd=round(sd, 4), per_seed=per_seed)
