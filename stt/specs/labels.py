"""Answers that are one label of a fixed set, scored by each label word's log-likelihood after the prompt
(lm-evaluation-harness's multiple choice): XNLI and every declared classification task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stt.calibration import calibrated_choices, macro_f1
from stt.loaders import Example

LABEL_METRICS = ("accuracy_calibrated", "accuracy", "accuracy_norm")


def choice(logprobs: dict[str, float], labels: Sequence[str], normalized: bool) -> str:
    """`acc`: the label with the highest summed log-likelihood; `acc_norm`: divided by the continuation's
    length in bytes (" entailment" is 11 bytes)."""
    def value(label: str) -> float:
        return logprobs[label] / len(f" {label}".encode()) if normalized else logprobs[label]

    return max(labels, key=value)


def score_rows(engine: Any, items: list[Example], prompts: list[str], labels: Sequence[str],
               gold: str = "label") -> list[dict[str, Any]]:
    """Each item's label log-likelihoods (JSON in `output`) and the highest one as the prediction."""
    k = len(labels)
    scores = engine.loglikelihood([(p, f" {label}") for p in prompts for label in labels])
    rows = []
    for n, (it, p) in enumerate(zip(items, prompts, strict=True)):
        lp = {label: s.logprob for label, s in zip(labels, scores[k * n: k * n + k], strict=True)}
        rows.append({"prompt": p, "output": json.dumps(lp), "prediction": choice(lp, labels, normalized=False),
                     "gold": it[gold], "prompt_tokens": 0, "completion_tokens": 0})
    return rows


def item_scores(rows: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, list[float]]:
    """Raw, length-normalised and calibrated accuracy per item (calibration: label biases fitted without
    test labels, stt/calibration.py)."""
    logprobs = [json.loads(r["output"]) for r in rows]
    calibrated = calibrated_choices([[lp[label] for label in labels] for lp in logprobs])
    return {"accuracy": [float(r["prediction"] == r["gold"]) for r in rows],
            "accuracy_norm": [float(choice(lp, labels, normalized=True) == r["gold"])
                              for lp, r in zip(logprobs, rows, strict=True)],
            "accuracy_calibrated": [float(labels[c] == r["gold"]) for c, r in zip(calibrated, rows, strict=True)]}


def corpus_scores(rows: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, float]:
    """Macro-F1 over the labels, raw and calibrated."""
    golds = [r["gold"] for r in rows]
    calibrated = calibrated_choices([[json.loads(r["output"])[label] for label in labels] for r in rows])
    return {"macro_f1": 100 * macro_f1([r["prediction"] for r in rows], golds, labels),
            "macro_f1_calibrated": 100 * macro_f1([labels[c] for c in calibrated], golds, labels)}
