"""Bootstrap intervals and paired tests against independent computations (closed forms, scipy)."""

import math

import numpy as np
import pytest

from stt.stats import bootstrap_ci, paired_bootstrap


def test_interval_of_a_proportion_matches_the_normal_approximation():
    # 240 of 400 correct: Wald 95% interval 60 +- 1.96 * sqrt(.6 * .4 / 400) * 100 = [55.20, 64.80].
    scores = [1.0] * 240 + [0.0] * 160
    ci = bootstrap_ci(scores, resamples=20000, seed=1)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 400) * 100
    assert ci.value == 60.0 and ci.n == 400
    assert ci.lo == pytest.approx(60 - half, abs=0.6) and ci.hi == pytest.approx(60 + half, abs=0.6)


def test_paired_interval_matches_scipy_bootstrap():
    from scipy import stats

    rng = np.random.default_rng(7)
    a = (rng.random(300) < 0.5).astype(float)
    b = np.where(rng.random(300) < 0.8, a, 1 - a)
    mine = paired_bootstrap(a, b, resamples=20000, seed=3)
    ref = stats.bootstrap((a * 100, b * 100), lambda x, y: np.mean(y - x), paired=True, vectorized=False,
                          n_resamples=4000, method="percentile", random_state=5).confidence_interval
    assert mine.value == pytest.approx(100 * float(np.mean(b - a)), abs=1e-4)
    assert mine.lo == pytest.approx(ref.low, abs=0.8) and mine.hi == pytest.approx(ref.high, abs=0.8)


def test_paired_p_value_agrees_with_a_sign_test_and_edge_cases():
    from scipy import stats

    # 30 items better, 10 worse, 160 unchanged: the exact two-sided sign test (McNemar) gives p = 0.0022.
    a = np.array([0.0] * 30 + [1.0] * 10 + [1.0] * 80 + [0.0] * 80)
    b = np.array([1.0] * 30 + [0.0] * 10 + [1.0] * 80 + [0.0] * 80)
    d = paired_bootstrap(a, b, resamples=20000, seed=0)
    exact = stats.binomtest(30, 40, 0.5).pvalue
    assert d.value == 10.0 and d.significant
    assert d.p_value == pytest.approx(exact, abs=0.004)
    same = paired_bootstrap(a, a, resamples=500)
    assert (same.value, same.lo, same.hi, same.p_value, same.significant) == (0.0, 0.0, 0.0, 1.0, False)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_seeded_and_reproducible():
    scores = [((i * 7) % 11) / 10 for i in range(37)]  # F1-like per-item scores: a continuous distribution
    assert bootstrap_ci(scores, resamples=1000, seed=4) == bootstrap_ci(scores, resamples=1000, seed=4)
    assert bootstrap_ci(scores, resamples=1000, seed=4) != bootstrap_ci(scores, resamples=1000, seed=5)
