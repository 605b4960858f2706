"""The comparison design's statistics against hand values and independent computations: Holm's adjustment,
the two-level (seeds, then items) bootstrap, label-bias calibration, macro-F1, BLEU per script, and the
report's positive-control gate."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from stt.calibration import calibrated_choices, fit_biases, macro_f1
from stt.metrics import translation_scores
from stt.report import write_report
from stt.scoring import score_predictions
from stt.stats import bootstrap_ci, holm, paired_bootstrap, seeded_ci, seeded_paired

LABELS = ["entailment", "neutral", "contradiction"]


def test_holm_equals_hand_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02]


def test_two_level_interval_holds_the_seed_variance():
    # Every item of a seed scores the same: the items add nothing, the seeds everything. Three draws from
    # {40, 50, 60}: P(all 40) = 1/27 > 2.5%, so the interval is [40, 60]; an items-only bootstrap gives width 0.
    scores = [[0.4] * 50, [0.5] * 50, [0.6] * 50]
    ci = seeded_ci(scores, resamples=4000)
    assert (ci.value, ci.lo, ci.hi, ci.n, ci.seeds) == (50.0, 40.0, 60.0, 50, 3)
    assert ci.seed_sd == pytest.approx(10.0) and ci.per_seed == (40.0, 50.0, 60.0)


def test_two_level_interval_keeps_the_shared_items_variance():
    # Three seeds that agree item by item: the seeds add nothing, so the interval is the items' interval of
    # one seed, not narrower by sqrt(3) as if every seed had its own test set.
    items = [1.0 if i < 80 else 0.0 for i in range(200)]
    three = seeded_ci([items] * 3, resamples=20000)
    one = bootstrap_ci(items, resamples=20000)
    assert (three.hi - three.lo) == pytest.approx(one.hi - one.lo, abs=0.8)


def test_two_level_interval_with_one_seed_is_the_item_bootstrap():
    items = [1.0 if i < 80 else 0.0 for i in range(200)]  # 40%: Wald half-width 6.79 points
    one = seeded_ci([items], resamples=20000)
    flat = bootstrap_ci(items, resamples=20000)
    assert one.value == flat.value == 40.0 and one.seed_sd == 0.0
    assert one.lo == pytest.approx(flat.lo, abs=0.6) and one.hi == pytest.approx(flat.hi, abs=0.6)
    assert one.lo == pytest.approx(40 - 6.79, abs=0.8)


def test_two_level_against_an_independent_loop():
    rng = np.random.default_rng(7)
    scores = (rng.random((3, 60)) < np.array([[0.3], [0.45], [0.5]])).astype(float)
    ci = seeded_ci(scores, resamples=20000, seed=1)
    # Independent: plain loops with Python's random module.
    import random
    r = random.Random(3)
    means = []
    for _ in range(20000):
        drawn = [r.randrange(3) for _ in range(3)]
        items = [r.randrange(60) for _ in range(60)]  # one draw of the test items, shared by the drawn seeds
        means.append(100 * sum(scores[s][i] for s in drawn for i in items) / 180)
    means.sort()
    assert ci.lo == pytest.approx(means[int(0.025 * 20000)], abs=1.0)
    assert ci.hi == pytest.approx(means[int(0.975 * 20000)], abs=1.0)


def test_seeded_paired_gain():
    a = [[0.0] * 40] * 3
    b = [[1.0 if i < 4 else 0.0 for i in range(40)]] * 3  # +10 points in every seed, on the same 4 items
    d = seeded_paired(a, b, resamples=4000)
    assert d.value == 10.0 and d.seed_sd == 0.0 and d.per_seed == (10.0, 10.0, 10.0)
    # The seeds agree, so the items alone decide: as one seed's paired bootstrap (4 wins of 40 items: exact
    # sign-test p = 0.125; the bootstrap's p is smaller but not the p < 0.001 of three independent test sets).
    one = paired_bootstrap(a[0], b[0], resamples=4000)
    assert d.lo == pytest.approx(one.lo, abs=1.0) and d.hi == pytest.approx(one.hi, abs=1.0)
    assert d.p_value == pytest.approx(one.p_value, abs=0.02)
    with pytest.raises(ValueError, match="same seeds and items"):
        seeded_paired(a, [[0.0] * 40] * 2)


def test_prior_matching_biases_equal_hand_values():
    row = [math.log(0.7), math.log(0.2), math.log(0.1)]
    b = fit_biases(np.array([row] * 10))
    assert b == pytest.approx([0.0, math.log(0.7 / 0.2), math.log(0.7 / 0.1)], abs=1e-6)


def _skewed_logprobs(n: int) -> tuple[list[list[float]], list[int]]:
    """A model that knows every answer (+2 on the gold label) but prefers label 0's words by 3 nats:
    raw argmax picks label 0 everywhere."""
    golds = [i % 3 for i in range(n)]
    return [[2.0 * (k == g) + (3.0 if k == 0 else 0.0) for k in range(3)] for g in golds], golds


def test_calibration_removes_a_label_bias_without_labels():
    logprobs, golds = _skewed_logprobs(300)
    raw = [int(np.argmax(lp)) for lp in logprobs]
    assert sum(r == g for r, g in zip(raw, golds, strict=True)) / 300 == pytest.approx(1 / 3)
    choices = calibrated_choices(logprobs)
    assert sum(c == g for c, g in zip(choices, golds, strict=True)) == 300
    assert calibrated_choices(logprobs, seed=5) == choices  # the split changes nothing when halves agree


def test_macro_f1_equals_hand_value():
    # a: TP1 FP1 FN0 -> 2/3; b: TP1 FP0 FN1 -> 2/3; c: TP1 -> 1
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", "c"], ["a", "b", "c"]) == pytest.approx(7 / 9)
    assert macro_f1(["a", "a"], ["a", "a"], ["a", "b"]) == pytest.approx(0.5)  # b never seen: 0


def test_bleu_on_thai_counts_characters():
    ref = ["แมวนั่งอยู่บนเสื่อสีแดง"]
    hyp = ["แมวนั่งอยู่บนเสื่อสีเขียว"]  # one word differs; no spaces: 13a would see one token each, BLEU 0
    th, de = translation_scores(hyp, ref, "th"), translation_scores(["ein Hund"], ["ein Hund"], "de")
    assert th["bleu_tokenizer"] == "char" and th["bleu"] > 40
    assert de["bleu_tokenizer"] == "13a"


def _predictions(folder, model, language, logprobs, golds):
    folder.mkdir(parents=True)
    rows = []
    for i, (lp, g) in enumerate(zip(logprobs, golds, strict=True)):
        lpd = dict(zip(LABELS, lp, strict=True))
        pred = max(LABELS, key=lpd.get)
        rows.append({"id": f"xnli-test:{language}:{i}", "index": i, "task": "mnli", "language": language,
                     "model": model, "prompt": "p", "output": json.dumps(lpd), "prediction": pred, "gold": LABELS[g],
                     "score": float(pred == LABELS[g])})
    pd.DataFrame(rows).to_parquet(folder / "predictions.parquet")
    return {"task": "mnli", "language": language, "model": model, "metric": "accuracy",
            "scores": score_predictions("mnli", language, rows, resamples=500), "folder": str(folder)}


def _knows(golds, right, bias=0.0):
    """Log-probabilities of a model right on the items in `right` (+2 on gold, else +2 on the next label),
    with `bias` nats added to label 0."""
    return [[2.0 * (k == (g if i in right else (g + 1) % 3)) + (bias if k == 0 else 0.0) for k in range(3)]
            for i, g in enumerate(golds)]


def test_report_primary_metric_holm_and_positive_control(tmp_path):
    n = 300
    golds = [i % 3 for i in range(n)]
    zero = set(range(120))                      # 40% right
    stt = set(range(10, 150))                   # 140 right: wins 120-149 (30), loses 0-9 (10)
    human = set(range(180))                     # 60%
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "de", _knows(golds, zero), golds),
                   _predictions(tmp_path / "stt", "self-translate-train", "de", _knows(golds, stt), golds),
                   _predictions(tmp_path / "h", "human-translate-train", "de", _knows(golds, human), golds)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"],
              "eval": {"bootstrap_resamples": 5000, "bootstrap_seed": 0, "primary_metric": {"mnli": "accuracy"}}}
    out = write_report(tmp_path / "run", evaluations, [], config)
    r = pd.read_parquet(out["results"]).iloc[0]
    assert (r["metric"], r["zero_shot"], r["stt"], r["human_tt"]) == ("accuracy", 40.0, 46.67, 60.0)  # 140 / 300
    # Holm over the table's two comparisons, computed here by hand from the raw p-values.
    lo_p, hi_p = sorted([r["gain_p"], r["human_gain_p"]])
    by_hand = {lo_p: min(1, 2 * lo_p), hi_p: max(min(1, 2 * lo_p), hi_p)}
    assert r["gain_p_holm"] == pytest.approx(by_hand[r["gain_p"]])
    assert r["human_gain_p_holm"] == pytest.approx(by_hand[r["human_gain_p"]])
    assert r["comparisons_in_family"] == 2
    md = (tmp_path / "run" / "report.md").read_text()
    assert ("Positive control, mnli de (accuracy), human translations of the items the self-translation passed: "
            "**passed**") in md
    assert md.index("Design checks") < md.index("## Results")

    # The same adapters, human translate-train no better than zero-shot: the gate says the run cannot judge.
    evaluations[2] = _predictions(tmp_path / "h2", "human-translate-train", "de", _knows(golds, zero), golds)
    write_report(tmp_path / "run2", evaluations, [], config)
    md = (tmp_path / "run2" / "report.md").read_text()
    assert "**failed**" in md and "cannot judge Self-Translate-Train" in md

    # The all-items controls: each is judged on its own; one passing is enough to judge the run.
    evaluations += [_predictions(tmp_path / "ha", "human-translate-train-all", "de", _knows(golds, human), golds),
                    _predictions(tmp_path / "ho", "human-only", "de", _knows(golds, zero), golds)]
    write_report(tmp_path / "run3", evaluations, [], config)
    md = (tmp_path / "run3" / "report.md").read_text()
    assert ("Positive control, mnli de (accuracy), human translations of every training item, with English 1:1: "
            "**passed** (+20.0 [") in md
    assert "Positive control, mnli de (accuracy), human translations of every training item, alone: **failed**" in md
    assert "human translations of the items the self-translation passed: **failed**" in md
    assert "cannot judge Self-Translate-Train" not in md


def test_report_defaults_to_calibrated_accuracy_for_nli(tmp_path):
    n = 300
    golds = [i % 3 for i in range(n)]
    # Knows 2/3 of the items but prefers label 0 by 3 nats: raw accuracy 1/3 (label 0 everywhere).
    skewed = _knows(golds, set(range(200)), bias=3.0)
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "de", skewed, golds)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"],
              "eval": {"bootstrap_resamples": 500}}
    out = write_report(tmp_path / "run", evaluations, [], config)
    r = pd.read_parquet(out["results"]).iloc[0]
    raw = json.loads(r["zero_shot_scores"])["accuracy"]
    assert raw == pytest.approx(100 / 3)
    assert r["metric"] == "accuracy_calibrated" and r["zero_shot"] > 60  # the bias removed, the knowledge kept
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Positive control, mnli de (accuracy_calibrated): not run" in md


def _adapter(root, task, name, steps):
    folder = root / task / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps({"metrics": {"steps": steps},
                                                       "config": {"batch_size": 4, "gradient_accumulation": 1}}))


def test_report_says_whether_the_arms_were_matched(tmp_path):
    golds = [i % 3 for i in range(30)]
    evaluations = [_predictions(tmp_path / "zs", "zero-shot", "de", _knows(golds, set(range(10))), golds)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"], "eval": {}}
    _adapter(tmp_path / "run", "mnli", "english", 63)
    _adapter(tmp_path / "run", "mnli", "self-translate-train-de", 92)
    _adapter(tmp_path / "run2", "mnli", "english", 50)
    _adapter(tmp_path / "run2", "mnli", "self-translate-train-de", 50)
    write_report(tmp_path / "run", evaluations, [], config)
    write_report(tmp_path / "run2", evaluations, [], config)
    assert ("Arms **not matched** in training, mnli: optimizer steps per adapter: english 63, "
            "self-translate-train-de 92") in (tmp_path / "run" / "report.md").read_text()
    assert "Matched arms, mnli: every adapter took 50 optimizer steps of 4 rows" in (
        tmp_path / "run2" / "report.md").read_text()


def test_report_over_three_seeds(tmp_path):
    n = 60
    golds = [i % 3 for i in range(n)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"],
              "eval": {"bootstrap_resamples": 2000, "primary_metric": {"mnli": "accuracy"}}}
    evaluations = [{**_predictions(tmp_path / "base", "base", "de", _knows(golds, set(range(12))), golds),
                    "seed": None}]
    for seed, (zs, stt) in enumerate([(18, 24), (24, 27), (30, 39)]):  # right on the first k items
        evaluations += [
            {**_predictions(tmp_path / f"zs{seed}", "zero-shot", "de", _knows(golds, set(range(zs))), golds),
             "seed": seed},
            {**_predictions(tmp_path / f"stt{seed}", "self-translate-train", "de", _knows(golds, set(range(stt))),
                            golds), "seed": seed}]
    out = write_report(tmp_path / "run", evaluations, [], config)
    r = pd.read_parquet(out["results"]).iloc[0]
    # By hand: zero-shot 30, 40, 50 % -> mean 40, sd 10; STT 40, 45, 65 -> mean 50; gains 10, 5, 15.
    assert json.loads(r["zero_shot_per_seed"]) == [30.0, 40.0, 50.0] and r["zero_shot"] == 40.0
    assert r["zero_shot_seed_sd"] == pytest.approx(10.0) and r["zero_shot_seeds"] == 3
    assert json.loads(r["stt_per_seed"]) == [40.0, 45.0, 65.0] and r["stt"] == 50.0
    assert json.loads(r["gain_per_seed"]) == [10.0, 5.0, 15.0] and r["gain"] == 10.0
    assert r["base"] == 20.0 and r["base_seeds"] == 1
    # The interval holds the seeds' spread: wider than the items-only interval of the pooled items.
    pooled = bootstrap_ci(sum(([1.0] * k + [0.0] * (n - k) for k in (18, 24, 30)), []), resamples=2000)
    assert (r["zero_shot_hi"] - r["zero_shot_lo"]) > (pooled.hi - pooled.lo)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "two-level percentile bootstrap over 3 training seeds" in md and "sd 10.0/3" in md


def test_power_of_the_pilot_script_equals_hand_value():
    import importlib.util

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location("power_from_pilot", ROOT / "scripts" / "power_from_pilot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # effect 3, SE 1, alpha 0.05: Phi(3 - 1.95996) + Phi(-3 - 1.95996) = 0.85083 + 0.0000004
    assert module.power(3.0, 1.0, 0.05) == pytest.approx(0.85083, abs=1e-4)


def test_english_reference_lists_every_adapter_on_the_english_test(tmp_path):
    golds = [i % 3 for i in range(30)]
    config = {"name": "t", "engine": {"model": "m"}, "languages": ["de"], "tasks": ["mnli"],
              "eval": {"bootstrap_resamples": 500, "primary_metric": {"mnli": "accuracy"}}}
    evaluations = [_predictions(tmp_path / "zs-de", "zero-shot", "de", _knows(golds, set(range(9))), golds),
                   _predictions(tmp_path / "zs-en", "zero-shot", "en", _knows(golds, set(range(15))), golds),
                   _predictions(tmp_path / "b-en", "base", "en", _knows(golds, set(range(6))), golds),
                   {**_predictions(tmp_path / "stt-en", "self-translate-train", "en", _knows(golds, set(range(12))),
                                   golds), "trained_for": "de"}]
    out = write_report(tmp_path / "run", evaluations, [], config)
    df = pd.read_parquet(out["results"])
    assert df["stt"].isna().all()  # the German adapter's English score is not the table's STT column
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| mnli   | self-translate-train (de) | accuracy | 30  | 40.0 [" in md
    assert "| mnli   | zero-shot                 | accuracy | 30  | 50.0 [" in md


def test_the_two_level_bootstrap_variance_has_the_closed_form_used_for_planning():
    """Issue 37: the power model must match the decision rule. stt.stats.two_level_variance gives the variance of
    the two-level resampler from the ANOVA mean squares; here against the resampler itself on random crossed
    data (40,000 resamples: Monte Carlo error about 1%)."""
    import numpy as np

    from stt.stats import _two_level_means, two_level_variance

    rng = np.random.default_rng(11)
    for s, n in ((3, 120), (5, 40), (2, 300)):
        d = rng.normal(0, 3, (s, 1)) + rng.normal(0, 6, (1, n)) + rng.normal(0, 30, (s, n))
        seed_means, item_means = d.mean(axis=1), d.mean(axis=0)
        ms_seed, ms_item = n * seed_means.var(ddof=1), s * item_means.var(ddof=1)
        ms_res = ((d - seed_means[:, None] - item_means[None, :] + d.mean()) ** 2).sum() / ((s - 1) * (n - 1))
        assert two_level_variance(ms_seed, ms_item, ms_res, s, n) == pytest.approx(
            _two_level_means(d, 40_000, 3).var(), rel=0.04)


def test_the_planned_power_is_the_power_of_the_seeded_bootstrap_test():
    """200 simulated studies from the random-effects model (3 seeds x 558 items, residual SD 32 points, a
    3-point gain), each decided by stt.stats.seeded_paired at Holm's first step of two (p < 0.025): the share
    rejected is the planned power (about 0.66), far from the power a test with the ANOVA SE alone would have
    (0.95)."""
    import math

    import numpy as np

    from stt.stats import bootstrap_test_power, seeded_paired, two_level_variance

    s, n, res, effect, alpha = 3, 558, 32.0, 3.0, 0.025
    se = math.sqrt(res**2 / (s * n))
    sd = math.sqrt(two_level_variance(res**2, res**2, res**2, s, n))
    planned = bootstrap_test_power(effect, se, sd, alpha)
    rng = np.random.default_rng(0)
    rejected = [seeded_paired(np.zeros((s, n)), (effect + rng.normal(0, res, (s, n))) / 100, resamples=1000,
                              seed=k).p_value < alpha for k in range(200)]
    assert 0.6 < planned < 0.72 and bootstrap_test_power(effect, se, se, alpha) > 0.9
    assert abs(np.mean(rejected) - planned) < 0.11  # 3.3 binomial SDs of 200 draws
