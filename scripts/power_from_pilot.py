"""Seed variance and power of a comparison, from a finished run with several training seeds (a pilot).

    python scripts/power_from_pilot.py runs/xnli-pilot --task mnli --language de --gain human_gain \\
        --new human_tt --baseline zero_shot --effect 3 --comparisons 6 > experiments/xnli-pilot/power.md

Model of a gain measured over S training seeds and N test items (paired): each seed's gain = the design's
true gain + a seed effect (SD sigma_seed) + item noise (SD s_d / sqrt(N), s_d = the SD of the per-item
differences of the primary metric within a seed). The mean over seeds then has

    SE(S, N) = sqrt(sigma_seed^2 / S + s_d^2 / (S * N)),

and a two-sided test at level alpha detects a gain `effect` with power
Phi(effect / SE - z) + Phi(-effect / SE - z), z = z_{1 - alpha/2}. alpha = 0.05 / comparisons: Holm's first
step (the most demanding), so the power is a lower bound for the comparison Holm tests first.
sigma_seed^2 = the variance of the per-seed gains minus the item noise in them (at least 0). From 3 seeds it
is a rough estimate: a 95% interval of an SD estimated from 3 values is about [0.52, 6.3] times it, so the
table is also given at the interval's upper end.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from stt.evaluate import item_scores


def per_item(path: str, task: str, language: str, metric: str) -> pd.Series:
    rows = pd.read_parquet(path).to_dict("records")
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
    args = ap.parse_args()

    df = pd.read_parquet(args.run / "results.parquet")
    row = df[(df["task"] == args.task) & (df["language"] == args.language)].iloc[0]
    metric = row["metric"]
    gains = np.array(json.loads(row[f"{args.gain}_per_seed"]))
    seeds = len(gains)
    new, base = per_item(row[f"{args.new}_predictions"], args.task, args.language, metric), per_item(
        row[f"{args.baseline}_predictions"], args.task, args.language, metric)
    n = len(new)
    s_d = float((new - base.loc[new.index]).std(ddof=1))
    observed_var = float(gains.var(ddof=1))
    sigma_seed = math.sqrt(max(0.0, observed_var - s_d**2 / n))
    chi = stats.chi2.ppf(0.025, seeds - 1)
    sigma_hi = math.sqrt(max(observed_var * (seeds - 1) / chi - s_d**2 / n, 0.0))
    alpha = 0.05 / args.comparisons
    print(f"# Seed variance and power: {args.task} {args.language}, {args.gain} ({args.new} - {args.baseline}), "
          f"metric `{metric}`\n")
    print(f"From `{args.run}` ({seeds} seeds, {n} test items):\n")
    for col in (args.baseline, args.new):
        print(f"- {col}: per seed {json.loads(row[f'{col}_per_seed'])}, seed SD {row[f'{col}_seed_sd']:.2f}")
    print(f"- {args.gain}: per seed {gains.round(2).tolist()}, mean {gains.mean():.2f}, SD {gains.std(ddof=1):.2f}")
    print(f"- per-item paired difference SD within a seed: s_d = {s_d:.1f} points (item noise in one seed's "
          f"gain: {s_d / math.sqrt(n):.2f})")
    print(f"- seed SD of the gain beyond item noise: sigma_seed = {sigma_seed:.2f} (95% upper end {sigma_hi:.2f})\n")
    print(f"Power to detect a {args.effect:g}-point gain, two-sided, alpha = 0.05 / {args.comparisons} "
          f"(Holm's first step):\n")
    print("| seeds S | test items N | SE | power | power at sigma_seed's upper end |\n|---|---|---|---|---|")
    for s in (3, 5, 8, 12):
        for items in (500, 1500, 5010):
            se = math.sqrt(sigma_seed**2 / s + s_d**2 / (s * items))
            se_hi = math.sqrt(sigma_hi**2 / s + s_d**2 / (s * items))
            print(f"| {s} | {items} | {se:.2f} | {power(args.effect, se, alpha):.2f} | "
                  f"{power(args.effect, se_hi, alpha):.2f} |")


if __name__ == "__main__":
    main()
