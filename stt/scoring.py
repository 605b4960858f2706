"""What saved predictions score: every per-item metric of a task, recomputed from the rows of a predictions
file, and the primary metric with its bootstrap interval. The evaluate stage (stt/stages/evaluate.py) scores
with it when it writes predictions, the report when it reads them back, so anyone can recompute a score."""

from __future__ import annotations

from typing import Any

from stt.config import EvalConfig
from stt.errors import ConfigError, DataError
from stt.specs import get_task
from stt.stats import RESAMPLES, SEED, bootstrap_ci


def default_metric(task: str) -> str:
    """The task's primary metric when the config names none (the first of its spec's primary_choices)."""
    return get_task(task).primary_choices[0]


def primary_metric(task: str, config: EvalConfig | None = None) -> str:
    """The metric a task's gains, intervals and significance use: the config's choice, else the default."""
    choices = get_task(task).primary_choices
    chosen = (config.primary_metric.get(task) if config else None) or choices[0]
    if chosen not in choices:
        raise ConfigError(f"eval.primary_metric: '{chosen}' is not a per-item metric of {task} "
                          f"(choose from {', '.join(choices)})")
    return chosen


def score_row(task: str, language: str, row: dict[str, Any]) -> float:
    """Per-item score of a saved prediction row (the `score` column)."""
    return get_task(task).score_row(language, row)


def item_scores(task: str, language: str, rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Every metric of the task, per item (0/1 or F1), recomputed from the saved rows."""
    return get_task(task).item_scores(language, rows)


def corpus_scores(task: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics that are not means of per-item scores (no interval here), e.g. macro-F1."""
    return get_task(task).corpus_scores(rows)


def score_predictions(task: str, language: str, rows: list[dict[str, Any]], resamples: int = RESAMPLES,
                      seed: int = SEED, metric: str | None = None) -> dict[str, Any]:
    """The scores of a predictions file, recomputed from its rows: every metric in percent, n, and a
    95% bootstrap interval over items for the primary metric (`ci_lo`, `ci_hi`; seed recorded)."""
    if not rows:
        raise DataError(f"no predictions to score for {task} {language}")
    per_item = item_scores(task, language, rows)
    out: dict[str, Any] = {name: 100 * sum(v) / len(v) for name, v in per_item.items()}
    out.update(corpus_scores(task, rows))
    ci = bootstrap_ci(per_item[metric or default_metric(task)], resamples=resamples, seed=seed)
    out.update(n=len(rows), ci_lo=ci.lo, ci_hi=ci.hi, ci_level=0.95, bootstrap_resamples=resamples,
               bootstrap_seed=seed)
    return out
