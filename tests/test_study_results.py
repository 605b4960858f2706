"""The committed study's numbers equal what its committed per-item predictions give.

Recomputed independently of stt.evaluate / stt.report: a score is the mean of the items' 0/1 scores,
a gain the mean of the paired differences, over the same item indices; the intervals are recomputed with
numpy's own bootstrap (same seed and resample count, the method stated in the report) and must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

STUDIES = sorted(p for p in (Path(__file__).parents[1] / "experiments").glob("*") if (p / "results.parquet").is_file())


def _scores(study: Path, relative: str) -> pd.Series:
    df = pd.read_parquet(study / relative, columns=["index", "score"])
    assert df["index"].is_unique
    return df.set_index("index")["score"].sort_index()


@pytest.mark.skipif(not STUDIES, reason="no committed study under experiments/")
@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_scores_recompute_from_committed_predictions(study: Path):
    from stt.report import COMPARISONS, MODEL_COLUMNS

    df = pd.read_parquet(study / "results.parquet")
    checked = 0
    for _, row in df.iterrows():
        for column in MODEL_COLUMNS:
            path = row.get(f"{column}_predictions")
            if not isinstance(path, str):
                continue
            scores = _scores(study, path)
            assert len(scores) == row[f"{column}_n"] == row["n"]
            assert round(100 * scores.mean(), 2) == pytest.approx(row[column], abs=0.006), (row["language"], column)
            checked += 1
        for name, new, base in COMPARISONS:
            if not all(isinstance(row.get(f"{c}_predictions"), str) for c in (new, base)):
                continue
            a, b = _scores(study, row[f"{new}_predictions"]), _scores(study, row[f"{base}_predictions"])
            assert list(a.index) == list(b.index), "a gain must compare the same items"
            diff = 100 * (a.to_numpy() - b.to_numpy())
            assert round(diff.mean(), 2) == pytest.approx(row[name], abs=0.006), (row["language"], name)
            # The interval: percentile bootstrap over items, resampled as the report says.
            rng = np.random.default_rng(int(row["bootstrap_seed"]))
            idx = rng.integers(0, len(diff), size=(int(row["bootstrap_resamples"]), len(diff)))
            means = diff[idx].mean(axis=1)
            lo, hi = np.percentile(means, [2.5, 97.5])
            assert (row[f"{name}_lo"], row[f"{name}_hi"]) == pytest.approx((lo, hi), abs=0.06), (row["language"], name)
            checked += 1
    assert checked >= 2 * len(df)
    checksums = json.loads((study / "predictions" / "full_checksums.json").read_text())
    assert checksums["files"], "the full prediction files' checksums are recorded"
