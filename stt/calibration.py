"""Label-bias correction for classification tasks scored by per-label log-likelihoods (NLI).

A small model often prefers one label's words whatever the input; raw accuracy then mixes what the model
knows with how its prior over label words happens to sit. Calibrated accuracy removes that prior without
any test label (prior matching): per-label biases `b` are fitted so that the mean of softmax(logp + b) over
a set of inputs equals the uniform distribution over labels, and the prediction is argmax(logp + b).

The biases for an item are fitted on the *other* half of the items (a seeded random split, halves swapped:
cross-fitting), so no item's own input sets its bias and no label is used anywhere. The split depends only
on the number of items and the seed, so every model evaluated on the same items shares it (paired gains).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CALIBRATION_SEED = 0


def fit_biases(logprobs: np.ndarray, iterations: int = 500, tolerance: float = 1e-10) -> np.ndarray:
    """Biases b (b[0] = 0) with mean_i softmax(logprobs[i] + b) = uniform. logprobs: items x labels.

    Fixed-point iteration b += log(1/K) - log(mean softmax): each step moves a label's bias by how far its
    mean probability is from its share; the mean probability is monotone in its own bias, so it converges."""
    x = np.asarray(logprobs, dtype=float)
    k = x.shape[1]
    b = np.zeros(k)
    for _ in range(iterations):
        z = x + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        step = np.log(1.0 / k) - np.log(p.mean(axis=0))
        b += step
        b -= b[0]
        if np.abs(step).max() < tolerance:
            break
    return b


def calibrated_choices(logprobs: Sequence[Sequence[float]], seed: int = CALIBRATION_SEED) -> list[int]:
    """Index of the chosen label per item after cross-fitted prior matching (see the module docstring).
    Fewer than 4 items: biases fitted on all of them (a half would hold one item)."""
    x = np.asarray(logprobs, dtype=float)
    n = len(x)
    if n == 0:
        return []
    if n < 4:
        return [int(v) for v in np.argmax(x + fit_biases(x), axis=1)]
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2 :])
    choice = np.empty(n, dtype=int)
    for fit_on, apply_to in (halves, halves[::-1]):
        choice[apply_to] = np.argmax(x[apply_to] + fit_biases(x[fit_on]), axis=1)
    return [int(v) for v in choice]


def macro_f1(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over labels of per-label F1 = 2TP / (2TP + FP + FN), in [0, 1]; a label never
    predicted and never gold scores 0 (as scikit-learn's default)."""
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(predictions, golds, strict=True))
        fp = sum(p == label and g != label for p, g in zip(predictions, golds, strict=True))
        fn = sum(p != label and g == label for p, g in zip(predictions, golds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)
