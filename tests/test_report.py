"""The comparison table from known prediction files: every number checked against a hand computation."""

import json

import pandas as pd
import pytest
from scipy import stats

from stt.report import write_report
from stt.scoring import score_predictions

LABELS = ["entailment", "neutral", "contradiction"]


def _predictions(folder, model, language, correct):
    """An XNLI predictions file whose item i is right iff correct[i]."""
    folder.mkdir(parents=True)
    rows = []
    for i, ok in enumerate(correct):
        gold = LABELS[i % 3]
        pred = gold if ok else LABELS[(i + 1) % 3]
        lp = {label: (-1.0 if label == pred else -5.0) for label in LABELS}
        rows.append({"id": f"xnli-test:{language}:{i}", "index": i, "task": "mnli", "language": language,
                     "model": model, "prompt": "p", "output": json.dumps(lp), "prediction": pred, "gold": gold,
                     "score": float(ok)})
    pd.DataFrame(rows).to_parquet(folder / "predictions.parquet")
    scores = score_predictions("mnli", language, rows, resamples=2000)
    return {"task": "mnli", "language": language, "model": model, "metric": "accuracy", "scores": scores,
            "folder": str(folder)}


def test_table_numbers_equal_hand_computation(tmp_path):
    n = 200
    zero = [i < 80 for i in range(n)]          # items 0-79 right: 40.0%
    stt = [10 <= i < 110 for i in range(n)]    # loses 0-9, wins 80-109: 100 right, 50.0%
    steps = [i < 84 for i in range(n)]         # 84 right: STT wins 84-109 (26), loses 0-9 (10): +8.0
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "de", zero),
                   _predictions(tmp_path / "stt", "self-translate-train", "de", stt),
                   _predictions(tmp_path / "steps", "zero-shot-equal-steps", "de", steps),
                   _predictions(tmp_path / "base", "base", "de", [i % 3 == 0 for i in range(n)])]
    quality = [{"task": "mnli", "language": "de", "scores": {"chrf": 51.2, "bleu": 20.1}}]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"],
              "eval": {"bootstrap_resamples": 20000, "bootstrap_seed": 0, "primary_metric": {"mnli": "accuracy"}}}
    out = write_report(tmp_path / "run", evaluations, quality, config)
    r = pd.read_parquet(out["results"]).iloc[0]
    assert (r["zero_shot"], r["stt"], r["zero_shot_steps"], r["base"]) == (40.0, 50.0, 42.0, 33.5)
    assert r["gain"] == 10.0 and r["gain_vs_equal_steps"] == 8.0
    # 30 items won, 10 lost: exact sign test p = 0.0022; the bootstrap p must be close, the interval exclude 0.
    assert r["gain_p"] == pytest.approx(stats.binomtest(30, 40).pvalue, abs=0.004)
    assert r["gain_lo"] > 0 and bool(r["gain_significant"])
    # Interval of a proportion: 40% of 200, Wald half-width 6.79 points.
    assert r["zero_shot_lo"] == pytest.approx(40 - 6.79, abs=0.8) and r["zero_shot_hi"] == pytest.approx(46.79, abs=0.8)
    assert r["n"] == 200 and r["chrf"] == 51.2 and r["bootstrap_seed"] == 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "+10.0 [" in md and "seed 0" in md
    assert r["gain_vs_equal_steps_p"] == pytest.approx(stats.binomtest(26, 36).pvalue, abs=0.01)


def test_a_gain_whose_interval_contains_zero_is_marked(tmp_path):
    a = [i % 2 == 0 for i in range(40)]
    b = [(i % 2 == 0) != (i in (0, 1)) for i in range(40)]  # one won, one lost: gain 0
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "th", a),
                   _predictions(tmp_path / "stt", "self-translate-train", "th", b)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["th"], "tasks": ["mnli"],
              "eval": {"primary_metric": {"mnli": "accuracy"}}}
    out = write_report(tmp_path / "run", evaluations, [], config)
    r = pd.read_parquet(out["results"]).iloc[0]
    assert r["gain"] == 0.0 and not bool(r["gain_significant"]) and r["gain_p"] == 1.0
    assert "n.s." in out["table"].iloc[0]["gain (STT - zero-shot)"]


def test_a_gain_over_different_items_is_refused(tmp_path):
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "de", [True] * 10),
                   _predictions(tmp_path / "stt", "self-translate-train", "de", [True] * 12)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"]}
    with pytest.raises(Exception, match="same items"):
        write_report(tmp_path / "run", evaluations, [], config)


def test_the_interval_note_describes_the_bootstrap_the_code_draws():
    """Issue 37: the note said items were drawn within each drawn seed; stt.stats draws one item sample shared
    by every drawn seed. With few seeds it says the seed part cannot reach beyond the seeds observed."""
    import pandas as pd

    from stt.report import _interval_note

    three = _interval_note(pd.DataFrame({"stt_seeds": [3]}), 10000, 0)
    assert "one sample of the test items with replacement, shared by every drawn seed" in three
    assert "within each drawn seed" not in three
    assert "with 3 seeds the seed part cannot reach beyond the observed seeds" in three
    assert "cannot reach beyond" not in _interval_note(pd.DataFrame({"stt_seeds": [8]}), 10000, 0)
    assert "over test items" in _interval_note(pd.DataFrame({"stt_seeds": [1]}), 10000, 0)


def test_the_saved_config_names_every_tasks_primary_metric_and_the_report_says_which_were_declared():
    from stt.report import primary_metric_line, resolved_config

    config = {"name": "r", "tasks": ["mnli", "squad", "gsm8k"], "languages": ["de"],
              "engine": {"model": "m"}, "eval": {"primary_metric": {"squad": "exact_match"}, "limit": 5}}
    saved = resolved_config(config)
    assert saved["eval"] == {"primary_metric": {"mnli": "accuracy_calibrated", "squad": "exact_match",
                                                "gsm8k": "accuracy"}, "limit": 5}
    assert config["eval"]["primary_metric"] == {"squad": "exact_match"}  # the caller's dict is left alone
    text = primary_metric_line({"mnli": "accuracy_calibrated", "squad": "exact_match"}, config)
    assert "mnli: `accuracy_calibrated` (the task default), squad: `exact_match` (declared in the config)" in text
