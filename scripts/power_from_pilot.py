"""Seed variance and power of a comparison, from a finished run with several training seeds (a pilot).

    python scripts/power_from_pilot.py runs/xnli-pilot --task mnli --language de --gain human_gain \\
        --new human_tt --baseline zero_shot --effect 3 --comparisons 6 > experiments/xnli-pilot/power.md

Model of a gain measured on the same N test items by S training seeds (a crossed design): the per-item
difference of the primary metric d[s, i] = gain + seed effect (SD sigma_seed) + item effect (SD sigma_item,
shared by every seed: the same test items) + residual (SD sigma_res). Two-way random-effects ANOVA on the
pilot's S x N matrix estimates the three; the mean over S' seeds and N' items then has

    SE(S', N') = sqrt(sigma_seed^2 / S' + sigma_item^2 / N' + sigma_res^2 / (S' * N')),

and a two-sided test at level alpha detects a gain `effect` with power
Phi(effect / SE - z) + Phi(-effect / SE - z), z = z_{1 - alpha/2}.

That is a test whose spread is the SE. The test that decides is the two-level bootstrap (stt.stats.seeded_paired),
whose spread SD* is wider with few seeds (stt.stats.two_level_variance, at the expected mean squares
MS_seed = sigma_res^2 + N' sigma_seed^2, MS_item = sigma_res^2 + S' sigma_item^2, MS_res = sigma_res^2): it
rejects when |gain| > z SD*, while the gain varies with the SE, so its power is
Phi((effect - z SD*) / SE) + Phi((-effect - z SD*) / SE), the column "bootstrap test" (added 2026-12-03,
issue 37: the earlier tables gave only the first, which overstates the power of the decision actually made).
alpha = 0.05 / comparisons: Holm's first
step (the most demanding), so the power is a lower bound for the comparison Holm tests first.
From 3 seeds sigma_seed is rough: the table is also given at the upper end of its 95% interval (chi-square
on the seeds' mean square).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from stt.scoring import item_scores
from stt.stats import bootstrap_test_power, two_level_variance


def per_item(path: str, task: str, language: str, metric: str, run: Path = Path()) -> pd.Series:
    # A committed study's results name its slim files relative to the study folder; label tasks score from the
    # full files' saved log-likelihoods.
    file = Path(path) if Path(path).is_file() else run / path
    full = file.with_name(file.name.replace(".parquet", ".full.parquet"))
    rows = pd.read_parquet(full if full.is_file() else file).to_dict("records")
    return pd.Series(item_scores(task, language, rows)[metric], index=[r["index"] for r in rows]) * 100


def power(effect: float, se: float, alpha: float) -> float:
    z = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf(effect / se - z) + stats.norm.cdf(-effect / se - z))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--task", default="mnli")
    ap.add_argument("--language", default="de")
    ap.add_argument("--gain", default="human_gain")
    ap.add_argument("--new", default="human_tt")
    ap.add_argument("--baseline", default="zero_shot")
    ap.add_argument("--effect", type=float, default=3.0)
    ap.add_argument("--comparisons", type=int, default=6, help="comparisons in the v2 table (Holm family)")
    ap.add_argument("--items", default="500,1500,5010",
                    help="test-set sizes to tabulate (XNLI test: 5,010; XQuAD's held-out articles: 558)")
    ap.add_argument("--seeds", default="3,5,8", help="seed counts to tabulate")
    args = ap.parse_args()

    df = pd.read_parquet(args.run / "results.parquet")
    row = df[(df["task"] == args.task) & (df["language"] == args.language)].iloc[0]
    metric = row["metric"]
    new_paths = json.loads(row[f"{args.new}_predictions_by_seed"])
    base_paths = json.loads(row[f"{args.baseline}_predictions_by_seed"])
    seeds = sorted(k for k in new_paths if k != "None")
    rows = []
    for k in seeds:
        new = per_item(new_paths[k], args.task, args.language, metric, args.run)
        base = per_item(base_paths.get(k, base_paths.get("None")), args.task, args.language, metric, args.run)
        rows.append((new - base.loc[new.index]).to_numpy())
    d = np.array(rows)
    s_, n = d.shape
    seed_means, item_means, grand = d.mean(axis=1), d.mean(axis=0), d.mean()
    ms_seed = n * seed_means.var(ddof=1)
    ms_item = s_ * item_means.var(ddof=1)
    resid = d - seed_means[:, None] - item_means[None, :] + grand
    ms_res = float((resid**2).sum() / ((s_ - 1) * (n - 1)))
    var_seed = max(0.0, (ms_seed - ms_res) / n)
    var_item = max(0.0, (ms_item - ms_res) / s_)
    var_seed_hi = max(0.0, (ms_seed * (s_ - 1) / stats.chi2.ppf(0.025, s_ - 1) - ms_res) / n)
    alpha = 0.05 / args.comparisons
    print(f"# Seed variance and power: {args.task} {args.language}, {args.gain} ({args.new} - {args.baseline}), "
          f"metric `{metric}`\n")
    print(f"From `{args.run}` ({s_} seeds, {n} test items, every seed on the same items):\n")
    for col in (args.baseline, args.new):
        print(f"- {col}: per seed {json.loads(row[f'{col}_per_seed'])}, seed SD {row[f'{col}_seed_sd']:.2f}")
    print(f"- {args.gain}: per seed {seed_means.round(2).tolist()}, mean {grand:.2f}, SD {seed_means.std(ddof=1):.2f}")
    # Under the model MS_seed estimates sigma_res^2 + N sigma_seed^2, never less than MS_res on average. One far
    # below it (the seeds agree more closely than the item noise allows) is a misfit: no bound on sigma_seed.
    misfit = float(stats.f.cdf(ms_seed / ms_res, s_ - 1, (s_ - 1) * (n - 1)))
    fit = f"sigma_seed = {math.sqrt(var_seed):.2f} (95% upper end {math.sqrt(var_seed_hi):.2f})"
    seed_text = (fit if misfit >= 0.05
                 else f"sigma_seed not estimable: the model does not fit (MS_seed {ms_seed:.1f} against MS_res "
                      f"{ms_res:,.0f}; a ratio this small has probability {misfit:.3f} under the model), so 0 is no "
                      "bound; the tables below use 0")
    print(f"- two-way random effects on the per-item differences (points): {seed_text}, "
          f"sigma_item = {math.sqrt(var_item):.1f}, sigma_res = {math.sqrt(ms_res):.1f}\n")
    print(f"Power to detect a {args.effect:g}-point gain, two-sided, alpha = 0.05 / {args.comparisons} "
          f"(Holm's first step):\n")
    observed = math.sqrt(two_level_variance(ms_seed, ms_item, ms_res, s_, n))
    print(f"On these {s_} seeds x {n} items the bootstrap test's SD* is {observed:.2f} (MS_seed {ms_seed:.1f}, "
          f"MS_item {ms_item:.1f}, MS_res {ms_res:.1f}).\n")
    print("| seeds S | test items N | SE | SD* | power (SE) | power of the bootstrap test | bootstrap test at "
          "sigma_seed's upper end |\n|---|---|---|---|---|---|---|")
    for seeds_n in [int(x) for x in args.seeds.split(",")]:
        for items in [int(x) for x in args.items.split(",")]:
            cells = []
            for v_seed in (var_seed, var_seed_hi):
                se = math.sqrt(v_seed / seeds_n + var_item / items + ms_res / (seeds_n * items))
                sd = math.sqrt(two_level_variance(ms_res + items * v_seed, ms_res + seeds_n * var_item, ms_res,
                                                  seeds_n, items))
                cells.append((se, sd))
            (se, sd), (se_hi, sd_hi) = cells
            print(f"| {seeds_n} | {items} | {se:.2f} | {sd:.2f} | {power(args.effect, se, alpha):.2f} | "
                  f"{bootstrap_test_power(args.effect, se, sd, alpha):.2f} | "
                  f"{bootstrap_test_power(args.effect, se_hi, sd_hi, alpha):.2f} |")


if __name__ == "__main__":
    main()
