"""Every number of a committed study, recomputed from its committed per-item outputs and the raw data files
with this file's own code: nothing from `stt` is imported.

- Gold labels come from the raw XNLI files of the data folder (`STT_DATA_DIR`, else ../shared/data), and gold
  answers from the raw XQuAD files, by the item index in each prediction's id, never from the study's `gold`
  or `score` columns. XQuAD is scored with this file's own copy of the official SQuAD v1.1 F1 / exact match.
- The full prediction files are verified against the SHA-256 recorded in `predictions/full_checksums.json`;
  the slim files must carry the same predictions; each prediction must be the argmax of its saved per-label
  log-likelihoods.
- The columns come from the results file (`*_predictions`); the comparisons from its `comparisons` column
  (or the study's `comparisons.json`).
- Every score, interval and n; every gain, interval, p-value, Holm-adjusted p-value and significance flag; the
  secondary scores (accuracy_norm, calibrated accuracy by prior matching solved here as a convex minimum with
  scipy, macro-F1); per-seed scores and seed SDs; chrF and BLEU from the exported translations.
- Anything in the results file that was not checked fails the test, except what the study declares not
  recomputable (with its reason).
- Issue 37's blind spots: the raw files must have the SHA-256 their folder's SOURCE.md records; each trained
  column has predictions for exactly the config's `train.seeds`, each file is the one its evaluation manifest
  vouches for, and that evaluation's adapter was trained with the file's seed; every prompt holds the raw input
  of the item its id names; the files' `gold` and `score` columns are the raw data's and the recomputed ones;
  intervals and p-values are drawn from the published scheme's own stream (stt.stats: PCG64 from the bootstrap
  seed, chunks of 500) and must be equal, not close; Holm is applied to this file's own p-values. Each is shown
  failing on a corrupted copy of the XQuAD study (`test_a_corrupted_copy_of_a_study_fails_the_recompute`).
  report.md's results table must show the same numbers. power.md and timings.md: tests/test_study_files.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "experiments").glob("*") if (p / "results.parquet").is_file())
LABELS = ["entailment", "neutral", "contradiction"]
PARAMETERS = {"task", "language", "metric", "n", "bootstrap_seed", "bootstrap_resamples", "comparisons"}


def data_dir() -> Path:
    return Path(os.environ.get("STT_DATA_DIR") or ROOT.parent / "shared" / "data")


def raw_gold(data: Path, language: str, split: str) -> list[str]:
    if split == "test":
        return (data / "xnli" / "xnli_test_labels.txt").read_text(encoding="utf-8").split()
    lines = (data / "xnli" / f"xtreme_dev-{language}.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[2].strip() for line in lines if line.strip()]


def raw_xnli_inputs(data: Path, language: str, split: str) -> list[tuple[str, str]]:
    """(premise, hypothesis) of every XNLI item in file order: what each prompt must hold."""
    name = f"xtreme_test-{language}.tsv" if split == "test" else f"xtreme_dev-{language}.tsv"
    lines = (data / "xnli" / name).read_text(encoding="utf-8").splitlines()
    return [(cells[0].strip(), cells[1].strip()) for cells in (line.split("\t") for line in lines if line.strip())]


def raw_files(task: str, language: str, split: str) -> list[str]:
    """The raw files the recompute reads for one row (relative to the data folder)."""
    if task == "squad":
        return [f"xquad/xquad.{language}.json"]
    inputs = f"xnli/xtreme_test-{language}.tsv" if split == "test" else f"xnli/xtreme_dev-{language}.tsv"
    return [inputs, "xnli/xnli_test_labels.txt"] if split == "test" else [inputs]


def source_hashes(folder: Path) -> dict[str, str]:
    """file name -> SHA-256 from the folder's SOURCE.md tables (the last cell of a row, 64 hex digits)."""
    import re

    out = {}
    for line in (folder / "SOURCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and re.fullmatch(r"[0-9a-f]{64}", cells[-1]):
            out[cells[0]] = cells[-1]
    return out


def raw_xquad(data: Path, language: str) -> list[dict]:
    """Every XQuAD question in file order (the item index counts them all): its text and gold answers."""
    raw = json.loads((data / "xquad" / f"xquad.{language}.json").read_text(encoding="utf-8"))["data"]
    return [{"question": qa["question"], "answers": [a["text"] for a in qa["answers"]]}
            for article in raw for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 evaluation script's normalisation: lower case, no ASCII punctuation, no English
    articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(pred: list[str], gold: list[str]) -> float:
    from collections import Counter

    common = sum((Counter(pred) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(prediction: str, golds: list[str], language: str) -> dict[str, float]:
    """Best over the gold answers, as the official script; characters for scripts without spaces."""
    import unicodedata

    def chars(text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace() and not unicodedata.category(c).startswith("P")]

    out = {"f1": max(token_f1(squad_normalize(prediction).split(), squad_normalize(g).split()) for g in golds),
           "exact_match": max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds)}
    if language in ("th", "zh", "ja"):
        out["char_f1"] = max(token_f1(chars(prediction), chars(g)) for g in golds)
    return out


# The published scheme's stream (stt.stats, documented there): numpy's PCG64 from the bootstrap seed, resamples
# drawn in chunks of 500, each chunk's seed indices (two-level) before its item indices. Drawn the same way here,
# the intervals and p-values must equal the study's to its 4 recorded decimals: a wrong scheme, resample count or
# seed moves them.
CHUNK = 500
EXACT = 1e-3  # the results round to 4 decimals; the sums' order may differ in the last bits


def bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[rng.integers(0, len(values), size=(min(CHUNK, resamples - start), len(values)))]
                            .mean(axis=1) for start in range(0, resamples, CHUNK)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi), means


def two_level(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float, np.ndarray]:
    """seeds x items (every seed on the same items): each resample draws seeds with replacement and one set of
    items shared by them."""
    rng = np.random.default_rng(seed)
    s, n = values.shape
    means = []
    for start in range(0, resamples, CHUNK):
        k = min(CHUNK, resamples - start)
        drawn, items = rng.integers(0, s, size=(k, s)), rng.integers(0, n, size=(k, n))
        means += [values[np.ix_(drawn[r], items[r])].mean() for r in range(k)]
    means = np.array(means)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi), means


def prior_matched(logprobs: np.ndarray, seed: int = 0) -> np.ndarray:
    """Calibrated choices: biases b with mean softmax(x + b) = 1/3, found as the minimum of the convex
    G(b) = mean_i logsumexp(x_i + b) - mean_k b_k (its gradient is mean softmax - 1/3; scipy's BFGS), fitted on
    one half of a seeded random split and applied to the other, halves swapped."""
    def fit(x: np.ndarray) -> np.ndarray:
        def g(b: np.ndarray) -> tuple[float, np.ndarray]:
            z = x + b
            top = z.max(axis=1, keepdims=True)
            p = np.exp(z - top)
            total = p.sum(axis=1, keepdims=True)
            value = float(np.mean(np.log(total) + top) - b.mean())
            return value, (p / total).mean(axis=0) - 1 / 3
        b = optimize.minimize(g, np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-10}).x
        assert np.abs(g(b)[1]).max() < 1e-6, "prior matching did not converge"
        return b - b[0]

    order = np.random.default_rng(seed).permutation(len(logprobs))
    a, b = order[: len(order) // 2], order[len(order) // 2 :]
    choice = np.empty(len(logprobs), dtype=int)
    choice[b] = np.argmax(logprobs[b] + fit(logprobs[a]), axis=1)
    choice[a] = np.argmax(logprobs[a] + fit(logprobs[b]), axis=1)
    return choice


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    f1 = []
    for k in range(3):
        tp, fp = np.sum((pred == k) & (gold == k)), np.sum((pred == k) & (gold != k))
        fn = np.sum((pred != k) & (gold == k))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return 100 * float(np.mean(f1))


def holm(p: list[float]) -> list[float]:
    m, out, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


class Recompute:
    def __init__(self, study: Path, data: Path, stop_at_first_problem: bool = False):
        self.study, self.data = study, data
        self.stop_at_first_problem = stop_at_first_problem  # a check that only needs to see one failure
        self.df = pd.read_parquet(study / "results.parquet")
        extra = study / "comparisons.json"
        meta = json.loads(extra.read_text()) if extra.is_file() else {}
        self.comparisons = (json.loads(self.df["comparisons"].iloc[0]) if "comparisons" in self.df
                            else meta["comparisons"])
        self.not_recomputable = meta.get("not_recomputable", {})
        config = json.loads((study / "config.json").read_text())
        # Its XNLI split: per task since issue 36 (eval.test_split), a setting of its own before.
        evaluation = config.get("eval", {})
        self.split = evaluation.get("test_split", {}).get("mnli", evaluation.get("xnli_split", "test"))
        self.tasks = config["tasks"]
        train = config.get("train", {})
        self.seeds = sorted(train.get("seeds") or [train.get("seed", 0)])
        self.problems: list[str] = []
        self.sources_checked: set[str] = set()
        self.checked: set[tuple[int, str]] = set()
        self.files_checked = 0

    def expect(self, row: int, column: str, ok: bool, detail: str) -> None:
        self.checked.add((row, column))
        if not ok:
            self.problems.append(f"row {row} ({self.df.at[row, 'language']}) {column}: {detail}")

    def checksums(self) -> dict[str, dict]:
        recorded = json.loads((self.study / "predictions" / "full_checksums.json").read_text())
        files = recorded["files"]
        self.recorded, self.translations = files, recorded.get("translations", {})
        for name, f in files.items():
            full = self.study / "predictions" / name.replace(".parquet", ".full.parquet")
            sha = hashlib.sha256(full.read_bytes()).hexdigest() if full.is_file() else "missing"
            if sha != f["sha256"]:
                self.problems.append(f"{full.name}: SHA-256 {sha[:12]} is not the recorded {f['sha256'][:12]}")
            self.files_checked += 1
        return files

    def run(self) -> None:
        if not set(self.tasks) <= {"mnli", "squad"}:
            self.problems.append(f"no independent scorer here for tasks {self.tasks} (XNLI and XQuAD only)")
            return
        self.checksums()
        columns = [c.removesuffix("_predictions") for c in self.df.columns if c.endswith("_predictions")]
        family: list[tuple[int, str, float]] = []
        for i, row in self.df.iterrows():
            self.check_sources(row["task"], row["language"])
            gold_all = (raw_xquad(self.data, row["language"]) if row["task"] == "squad"
                        else raw_gold(self.data, row["language"], self.split))
            inputs = None if row["task"] == "squad" else raw_xnli_inputs(self.data, row["language"], self.split)
            resamples, seed = int(row["bootstrap_resamples"]), int(row["bootstrap_seed"])
            per_item: dict[str, pd.Series] = {}
            for col in columns:
                rel = row[f"{col}_predictions"]
                if not isinstance(rel, str):
                    continue
                by_seed = row.get(f"{col}_predictions_by_seed")
                paths = json.loads(by_seed) if isinstance(by_seed, str) else {"-": rel}
                seeds = {}
                trained = sorted(int(k) for k in paths if k.isdigit())
                if trained:  # a column of adapters: one per seed of the config, no more, no fewer
                    self.expect(i, f"{col}_predictions_by_seed", trained == self.seeds,
                                f"predictions of seeds {trained}; the config's train.seeds is {self.seeds}")
                for seed_key, path in sorted(paths.items()):
                    seeds[seed_key] = self.load(i, col, path, gold_all, row, inputs)
                    self.check_provenance(i, col, row["task"], seed_key, Path(path).name)
                first = seeds[sorted(paths, key=lambda k: paths[k] != rel)[0]]
                per_item[col] = {k: v[0] for k, v in seeds.items()}
                self.check_column(i, col, row, per_item[col], first, resamples, seed)
            self.expect(i, "n", int(row["n"]) == max(len(next(iter(s.values()))) for s in per_item.values()), "n")
            if self.stop_at_first_problem and self.problems:  # this row's columns are all checked
                return
            pairs = [(name, new, base) for name, new, base in self.comparisons]
            if row["language"] == "en":
                pairs.append(("learned", "zero_shot", "base"))  # the English reference, outside the family
            for name, new, base in pairs:
                if new not in per_item or base not in per_item or name not in self.df:
                    continue
                lo, hi, p = self.check_gain(i, name, row, per_item[new], per_item[base], resamples, seed)
                if name == "learned":
                    continue
                family.append((i, name, p))  # Holm from this file's own p-values, not the study's
                if f"{name}_p_holm" not in self.df:  # before Holm: significant = the interval excludes 0
                    self.expect(i, f"{name}_significant", bool(row[f"{name}_significant"]) == (not lo <= 0 <= hi),
                                "significance flag")
            self.check_translations(i, row)
        if "comparisons_in_family" in self.df:
            for i in self.df.index:
                self.expect(i, "comparisons_in_family", self.df.at[i, "comparisons_in_family"] == len(family),
                            f"{len(family)} comparisons in the table")
            for (i, name, _), adj in zip(family, holm([p for *_, p in family]), strict=True):
                self.expect(i, f"{name}_p_holm", self.df.at[i, f"{name}_p_holm"] == pytest.approx(adj, abs=1e-5),
                            f"Holm p vs {adj:.4f}")
                self.expect(i, f"{name}_significant", bool(self.df.at[i, f"{name}_significant"]) == (adj < 0.05),
                            "significance at the Holm-adjusted p")

    def load(self, i: int, col: str, rel: str, gold_all: list, row: pd.Series, inputs: list | None
             ) -> tuple[pd.Series, dict, tuple | None]:
        recorded = self.recorded
        name = Path(rel).name
        self.expect(i, f"{col}_predictions", name in recorded, f"no recorded checksum for {name}")
        full = pd.read_parquet(self.study / "predictions" / name.replace(".parquet", ".full.parquet"))
        slim = pd.read_parquet(self.study / rel)
        index = np.array([int(x.rsplit(":", 1)[1]) for x in full["id"]])
        metric = row["metric"]
        same_ids = list(slim["id"]) == list(full["id"]) and list(slim["index"]) == list(full["index"]) == index.tolist()
        self.expect(i, f"{col}_predictions", same_ids, f"{name}: ids and indices disagree")
        # Each prompt holds the raw input of the item its id names (items aligned before export).
        if row["task"] == "squad":
            held = [gold_all[k]["question"].strip() in prompt for prompt, k in zip(full["prompt"], index, strict=True)]
        else:
            held = [inputs[k][0] in prompt and inputs[k][1] in prompt
                    for prompt, k in zip(full["prompt"], index, strict=True)]
        misaligned = [int(k) for k, ok in zip(index, held, strict=True) if not ok]
        self.expect(i, f"{col}_predictions", not misaligned,
                    f"{name}: the prompts of items {misaligned[:5]} do not hold their raw inputs")
        if row["task"] == "squad":
            self.expect(i, f"{col}_predictions", list(slim["prediction"]) == list(full["prediction"]),
                        "slim and full files disagree")
            per_item = [squad_metrics(p, gold_all[k]["answers"], row["language"])
                        for p, k in zip(full["prediction"], index, strict=True)]
            metrics = {m: np.array([x[m] for x in per_item]) for m in per_item[0]}
            self.check_gold_and_score(i, col, name, [json.loads(g) for g in slim["gold"]],
                                      [gold_all[k]["answers"] for k in index], slim, full, metrics["f1"])
            return pd.Series(metrics[metric] * 100, index=index), metrics, None
        self.check_gold_and_score(i, col, name, list(slim["gold"]), [gold_all[k] for k in index], slim, full,
                                  (np.array(list(full["prediction"])) == np.array([gold_all[k] for k in index]))
                                  .astype(float))
        gold = np.array([LABELS.index(gold_all[k]) for k in index])
        logprobs = np.array([[json.loads(o)[lab] for lab in LABELS] for o in full["output"]])
        pred = np.array([LABELS.index(p) for p in full["prediction"]])
        self.expect(i, f"{col}_predictions", list(slim["prediction"]) == list(full["prediction"])
                    and np.array_equal(np.argmax(logprobs, axis=1), pred),
                    "slim and full files disagree, or a prediction is not the argmax of its scores")
        norm = np.argmax(logprobs / np.array([len(f" {lab}".encode()) for lab in LABELS]), axis=1)
        calibrated = prior_matched(logprobs)
        metrics = {"accuracy": (pred == gold).astype(float), "accuracy_norm": (norm == gold).astype(float),
                   "accuracy_calibrated": (calibrated == gold).astype(float)}
        return pd.Series(metrics[metric] * 100, index=index), metrics, (pred, calibrated, gold)

    def check_gold_and_score(self, i: int, col: str, name: str, gold: list, raw: list, slim: pd.DataFrame,
                             full: pd.DataFrame, score: np.ndarray) -> None:
        """The files' `gold` (slim and full) is the raw data's, and `score` is the per-item score recomputed here
        (raw accuracy; SQuAD F1 as a fraction)."""
        full_gold = [json.loads(g) for g in full["gold"]] if isinstance(gold[0], list) else list(full["gold"])
        wrong = [k for k, (g, r, f) in enumerate(zip(gold, raw, full_gold, strict=True)) if not g == r == f]
        self.expect(i, f"{col}_predictions", not wrong, f"{name}: gold of rows {wrong[:5]} is not the raw data's")
        for which, frame in (("slim", slim), ("full", full)):
            off = np.flatnonzero(~np.isclose(frame["score"].to_numpy(dtype=float), score, atol=1e-9))
            self.expect(i, f"{col}_predictions", not len(off),
                        f"{name}: {which} score of rows {off[:5].tolist()} is not the recomputed one")

    def check_sources(self, task: str, language: str) -> None:
        """The raw files read here are the ones the data folder's SOURCE.md records (SHA-256): a corrupted file
        would move the study and this recomputation alike."""
        for rel in raw_files(task, language, self.split):
            if rel in self.sources_checked:
                continue
            self.sources_checked.add(rel)
            folder, name = (self.data / rel).parent, Path(rel).name
            recorded = source_hashes(folder).get(name)
            sha = hashlib.sha256((self.data / rel).read_bytes()).hexdigest()
            if sha != recorded:
                self.problems.append(f"data {rel}: SHA-256 {sha[:12]} is not the {str(recorded)[:12]} of its SOURCE.md")

    def check_provenance(self, i: int, col: str, task: str, seed_key: str, name: str) -> None:
        """The evaluation's manifest vouches for this prediction file, and the adapter it names was trained with
        this seed (a seed dropped or swapped before export shows here)."""
        folder = self.study / "manifests" / task / "eval" / name.removesuffix(".parquet")
        marker = folder / "_manifest.json"
        if not marker.is_file():
            self.expect(i, f"{col}_predictions_by_seed", False,
                        f"no evaluation manifest {marker.relative_to(self.study)}")
            return
        info = json.loads(marker.read_text())
        self.expect(i, f"{col}_predictions_by_seed",
                    info["files"].get("predictions.parquet") == self.recorded.get(name, {}).get("sha256"),
                    f"{name}: not the predictions its evaluation manifest vouches for")
        if info.get("adapter"):
            adapter = self.study / "manifests" / task / "adapters" / Path(info["adapter"]).name / "_manifest.json"
            trained = json.loads(adapter.read_text())["config"].get("seed") if adapter.is_file() else None
            self.expect(i, f"{col}_predictions_by_seed", adapter.is_file() and (
                not seed_key.isdigit() or trained == int(seed_key)),
                f"{name}: adapter {Path(info['adapter']).name} has no manifest or another seed ({trained})")

    def check_column(self, i: int, col: str, row: pd.Series, by_seed: dict[str, pd.Series], first: tuple,
                     resamples: int, seed: int) -> None:
        order = sorted(by_seed, key=lambda k: (k in ("None", "-"), int(k) if k.lstrip("-").isdigit() else 0))
        values = np.array([by_seed[k].loc[by_seed[order[0]].index].to_numpy() for k in order])
        n = values.shape[1]
        tol = EXACT
        if len(order) == 1:
            lo, hi, _ = bootstrap(values[0], resamples, seed)
        else:
            lo, hi, means = two_level(values, resamples, seed)
            per_seed = values.mean(axis=1)
            self.expect(i, f"{col}_per_seed", json.loads(row[f"{col}_per_seed"]) == pytest.approx(per_seed, abs=0.006),
                        f"per seed {row[f'{col}_per_seed']} vs {per_seed.round(2)}")
            self.expect(i, f"{col}_seed_sd", row[f"{col}_seed_sd"] == pytest.approx(per_seed.std(ddof=1), abs=0.006),
                        "seed SD")
        if f"{col}_seeds" in self.df:
            self.expect(i, f"{col}_seeds", int(row[f"{col}_seeds"]) == len(order), "number of seeds")
        mean = values.mean()
        self.expect(i, col, round(mean, 2) == pytest.approx(row[col], abs=0.006),
                    f"{row[col]} recorded, {mean:.2f} recomputed")
        self.expect(i, f"{col}_n", int(row[f"{col}_n"]) == n, f"n {row[f'{col}_n']} vs {n}")
        self.expect(i, f"{col}_lo", row[f"{col}_lo"] == pytest.approx(lo, abs=tol), f"lo vs {lo:.2f}")
        self.expect(i, f"{col}_hi", row[f"{col}_hi"] == pytest.approx(hi, abs=tol), f"hi vs {hi:.2f}")
        _, metrics, choices = first
        flo, fhi, _ = bootstrap(metrics[row["metric"]] * 100, resamples, seed)
        self.check_scores(i, col, json.loads(row[f"{col}_scores"]), metrics, choices, n, (flo, fhi), row)

    def check_gain(self, i: int, name: str, row: pd.Series, new: dict[str, pd.Series], base: dict[str, pd.Series],
                   resamples: int, seed: int) -> tuple[float, float, float]:
        keys = sorted(k for k in new if k not in ("None", "-")) or sorted(new)
        index = next(iter(new.values())).index
        self.expect(i, name, all(list(s.index) == list(index) for s in [*new.values(), *base.values()]),
                    "the two columns scored different items")
        base_of = {k: base.get(k, base.get("None", base.get("-"))) for k in keys}
        diff = np.array([new[k].to_numpy() - base_of[k].to_numpy() for k in keys])
        tol, ptol = EXACT, 1e-5
        if len(keys) == 1:
            lo, hi, means = bootstrap(diff[0], resamples, seed)
        else:
            lo, hi, means = two_level(diff, resamples, seed)
            per_seed = diff.mean(axis=1)
            self.expect(i, f"{name}_per_seed", json.loads(row[f"{name}_per_seed"]) == pytest.approx(per_seed,
                        abs=0.006), "per-seed gains")
            self.expect(i, f"{name}_seed_sd", row[f"{name}_seed_sd"] == pytest.approx(per_seed.std(ddof=1),
                        abs=0.006), "seed SD of the gain")
        if f"{name}_seeds" in self.df:
            self.expect(i, f"{name}_seeds", int(row[f"{name}_seeds"]) == len(keys), "number of seeds")
        obs = diff.mean()
        p = min(1.0, (np.sum(np.abs(means - obs) >= abs(obs) - 1e-12) + 1) / (resamples + 1))
        self.expect(i, name, round(obs, 2) == pytest.approx(row[name], abs=0.006), f"{row[name]} vs {obs:.2f}")
        self.expect(i, f"{name}_lo", row[f"{name}_lo"] == pytest.approx(lo, abs=tol), f"lo vs {lo:.2f}")
        self.expect(i, f"{name}_hi", row[f"{name}_hi"] == pytest.approx(hi, abs=tol), f"hi vs {hi:.2f}")
        self.expect(i, f"{name}_p", row[f"{name}_p"] == pytest.approx(p, abs=ptol), f"p {row[f'{name}_p']} vs {p:.6f}")
        return lo, hi, p

    def check_translations(self, i: int, row: pd.Series) -> None:
        """chrF and BLEU from the exported translations, references read from the raw XNLI dev files (XQuAD:
        the human translations of the questions)."""
        path = self.study / "translations" / f"{row['task']}-{row['language']}.parquet"
        if row.get("chrf") != row.get("chrf") or not path.is_file():
            return
        import sacrebleu

        recorded = self.translations.get(path.name, {}).get("sha256")
        self.expect(i, "chrf", recorded == hashlib.sha256(path.read_bytes()).hexdigest(), "translations checksum")
        t = pd.read_parquet(path)
        if row["task"] == "squad":
            questions = raw_xquad(self.data, row["language"])
            refs = [questions[int(x.rsplit(":", 1)[1])]["question"] for x in t["id"]]
        else:
            lines = (self.data / "xnli" / f"xtreme_dev-{row['language']}.tsv").read_text(encoding="utf-8").splitlines()
            refs = [lines[int(x.rsplit(":", 1)[1])].split("\t")[1] for x in t["id"]]
        tokenizer = {"th": "char", "ja": "char", "zh": "zh"}.get(row["language"], "13a")
        chrf = sacrebleu.corpus_chrf(list(t["output"]), [refs]).score
        bleu = sacrebleu.corpus_bleu(list(t["output"]), [refs], tokenize=tokenizer).score
        self.expect(i, "chrf", row["chrf"] == pytest.approx(chrf, abs=0.006), f"chrF {row['chrf']} vs {chrf:.2f}")
        self.expect(i, "bleu", row["bleu"] == pytest.approx(bleu, abs=0.006), f"BLEU {row['bleu']} vs {bleu:.2f}")
        if "bleu_tokenizer" in self.df:
            self.expect(i, "bleu_tokenizer", row["bleu_tokenizer"] == tokenizer, "BLEU tokenizer for the script")

    def check_scores(self, i: int, col: str, scores: dict, metrics: dict, choices: tuple, n: int,
                     interval: tuple[float, float], row: pd.Series) -> None:
        expected = {name: 100 * v.mean() for name, v in metrics.items()}
        expected |= {"n": n, "ci_lo": interval[0], "ci_hi": interval[1], "ci_level": 0.95,
                     "bootstrap_resamples": row["bootstrap_resamples"], "bootstrap_seed": row["bootstrap_seed"]}
        if choices is not None:  # label tasks
            pred, calibrated, gold = choices
            expected |= {"macro_f1": macro_f1(pred, gold), "macro_f1_calibrated": macro_f1(calibrated, gold)}
        for key, value in scores.items():
            if key not in expected:
                self.expect(i, f"{col}_scores", False, f"'{key}' has no independent recomputation here")
                continue
            tol = EXACT if key in ("ci_lo", "ci_hi") else 0.006
            self.expect(i, f"{col}_scores", value == pytest.approx(expected[key], abs=tol), f"{key} {value}")

    def check_report(self) -> None:
        """Every score, interval, gain, p-value and chrF of results.parquet appears, as the report formats it, in
        its row of report.md's results table (the text a reader reads, against the numbers checked above)."""
        lines = (self.study / "report.md").read_text(encoding="utf-8").splitlines()
        columns = [c.removesuffix("_predictions") for c in self.df.columns if c.endswith("_predictions")]
        for _, row in self.df.iterrows():
            found = [ln for ln in lines if [c.strip() for c in ln.strip("|").split("|")][:3]
                     == [row["task"], row["language"], row["metric"]]]
            if not found:
                self.problems.append(f"report.md: no results row for {row['task']} {row['language']}")
                continue
            shown = []
            for col in columns:
                if row.get(col) == row.get(col) and row.get(col) is not None:
                    shown.append(f"{row[col]:.1f} [{row[f'{col}_lo']:.1f}, {row[f'{col}_hi']:.1f}]")
            for name, _, _ in self.comparisons:
                if name in self.df and row[name] == row[name]:
                    text = f"{row[name]:+.1f} [{row[f'{name}_lo']:.1f}, {row[f'{name}_hi']:.1f}]"
                    shown += [text, f"p={row[f'{name}_p']:.3f}"]
                    if f"{name}_p_holm" in self.df:
                        shown.append(f"(Holm {row[f'{name}_p_holm']:.3f})")
            if row.get("chrf") == row.get("chrf") and row.get("chrf") is not None:
                shown.append(f"{row['chrf']:.1f}")
            for text in shown:
                if text not in found[0]:
                    self.problems.append(f"report.md {row['task']} {row['language']}: '{text}' is not in its row")

    def unchecked(self) -> list[str]:
        out = []
        for i, row in self.df.iterrows():
            for column, value in row.items():
                if column in PARAMETERS or column in self.not_recomputable or (i, column) in self.checked:
                    continue
                if value is None or (isinstance(value, float) and value != value):
                    continue  # a column not run for this row
                out.append(f"row {i} {column} = {value}")
        return out


@pytest.mark.skipif(not STUDIES, reason="no committed study under experiments/")
@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_every_number_of_a_committed_study_recomputes(study: Path):
    check = Recompute(study, data_dir())
    check.run()
    check.check_report()
    assert not check.problems, "\n".join(check.problems)
    assert not check.unchecked(), "numbers nobody recomputed:\n" + "\n".join(check.unchecked())
    assert check.files_checked >= len([c for c in check.df.columns if c.endswith("_predictions")])


@pytest.mark.skipif(not STUDIES, reason="no committed study under experiments/")
@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_one_changed_gold_label_fails_the_recompute(study: Path, tmp_path):
    data = tmp_path / "data"
    results = pd.read_parquet(study / "results.parquet")
    row = results.iloc[0]
    first = pd.read_parquet(study / row["zero_shot_predictions"])
    k = int(first["id"].iloc[0].rsplit(":", 1)[1])  # an item the study scored
    if row["task"] == "squad":
        # One question's gold answers replaced: by the model's own answer where that scored below 1 (it now
        # scores 1), else by words it did not say (it now scores 0).
        shutil.copytree(data_dir() / "xquad", data / "xquad")
        path = data / "xquad" / f"xquad.{row['language']}.json"
        raw = json.loads(path.read_text(encoding="utf-8"))
        qas = [qa for article in raw["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
        wrong = first[(first["score"] < 1) & (first["prediction"].str.strip() != "")]
        item = wrong.iloc[0] if len(wrong) else first.iloc[0]
        k = int(item["id"].rsplit(":", 1)[1])
        changed = item["prediction"] if len(wrong) else "qqq zzz"
        qas[k]["answers"] = [{"text": changed, "answer_start": 0}]
        path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    else:
        shutil.copytree(data_dir() / "xnli", data / "xnli")
        labels = (data / "xnli" / "xnli_test_labels.txt").read_text().split("\n")
        labels[k] = LABELS[(LABELS.index(labels[k]) + 1) % 3]
        (data / "xnli" / "xnli_test_labels.txt").write_text("\n".join(labels))
    check = Recompute(study, data, stop_at_first_problem=True)
    check.run()
    assert any("recomputed" in p for p in check.problems), check.problems[:5]
    # The file no longer has the SHA-256 its SOURCE.md records: caught before any number is compared, even
    # when both the study and this recomputation read the same corrupted file.
    assert any("of its SOURCE.md" in p for p in check.problems), check.problems[:5]


@pytest.mark.skipif(not STUDIES, reason="no committed study under experiments/")
@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_the_committed_config_records_the_primary_metric_its_results_use(study: Path):
    """Issue 37: v2's config said `eval.primary_metric: {}` while its numbers are calibrated accuracy (the code's
    default). Every committed config names each task's primary metric, and it is the one results.parquet used."""
    import pandas as pd

    config = json.loads((study / "config.json").read_text())
    named = config["eval"].get("primary_metric") or {}
    used = dict(zip(*pd.read_parquet(study / "results.parquet")[["task", "metric"]].T.values, strict=True))
    assert set(named) == set(config["tasks"]), f"{study.name}: eval.primary_metric names {named}"
    assert named == used


# --- the blind spots of issue 37: each corruption of a copy of a study fails the recompute with its own line ----

QA_STUDY = ROOT / "experiments" / "xquad-study"


def _set_cell(study: Path, column: str, language: str, change) -> None:
    df = pd.read_parquet(study / "results.parquet")
    row = df.index[df["language"] == language][0]
    df.at[row, column] = change(df.at[row, column])
    df.to_parquet(study / "results.parquet", index=False)


def _rewrite_full(study: Path, name: str, change) -> None:
    """Change a full prediction file and record its new checksum (what a consistent bad export would do)."""
    path = study / "predictions" / name.replace(".parquet", ".full.parquet")
    frame = change(pd.read_parquet(path))
    frame.to_parquet(path, index=False)
    sums = json.loads((study / "predictions" / "full_checksums.json").read_text())
    sums["files"][name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (study / "predictions" / "full_checksums.json").write_text(json.dumps(sums))


def _rotate_prompts(frame: pd.DataFrame) -> pd.DataFrame:
    frame["prompt"] = list(frame["prompt"].iloc[1:]) + [frame["prompt"].iloc[0]]
    return frame


def _config(study: Path, change) -> None:
    config = json.loads((study / "config.json").read_text())
    change(config)
    (study / "config.json").write_text(json.dumps(config))


def _adapter_seed(study: Path, adapter: str, seed: int) -> None:
    path = study / "manifests" / "squad" / "adapters" / adapter / "_manifest.json"
    info = json.loads(path.read_text())
    info["config"]["seed"] = seed
    path.write_text(json.dumps(info))


def _slim(study: Path, name: str, change) -> None:
    path = study / "predictions" / name
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def _flip_score(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[0, "score"] = 1.0 - frame.loc[0, "score"]
    return frame


def _other_gold(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[0, "gold"] = json.dumps(["something else"])
    return frame


BLIND_SPOTS = {
    # a seed dropped consistently: the config trained four, the study reports three
    "seed dropped": (lambda d: _config(d, lambda c: c["train"].update(seeds=[0, 1, 2, 3])),
                     "the config's train.seeds is [0, 1, 2, 3]"),
    "adapter of another seed": (lambda d: _adapter_seed(d, "english.seed1", 2), "has no manifest or another seed"),
    "items misaligned before export": (lambda d: _rewrite_full(d, "zero-shot-de.parquet", _rotate_prompts),
                                       "do not hold their raw inputs"),
    "a wrong score column": (lambda d: _slim(d, "zero-shot-de.parquet", _flip_score),
                             "slim score of rows [0] is not the recomputed one"),
    "a wrong gold column": (lambda d: _slim(d, "zero-shot-de.parquet", _other_gold), "gold of rows [0]"),
    # 0.05 inside the old 0.4 tolerance: the scheme is deterministic, so the end must be equal
    "an interval end off by 0.05": (lambda d: _set_cell(d, "gain_lo", "de", lambda v: v + 0.05), "gain_lo: lo vs"),
    # a p-value inside the old tolerance, its Holm value made consistent with it
    # the report's table says one thing, results.parquet (checked above) another
    "a report number that is not the results'": (
        lambda d: (d / "report.md").write_text((d / "report.md").read_text().replace("43.0 [35.6, 50.4]",
                                                                                     "44.0 [35.6, 50.4]")),
        "report.md squad de: '43.0 [35.6, 50.4]' is not in its row"),
    "a p-value off by 0.004": (lambda d: (_set_cell(d, "gain_p", "de", lambda v: v + 0.004),
                                          _set_cell(d, "gain_p_holm", "de", lambda v: v + 0.008)), "gain_p: p"),
}


@pytest.mark.skipif(not (QA_STUDY / "results.parquet").is_file(), reason="the committed XQuAD study is needed")
@pytest.mark.parametrize("case", sorted(BLIND_SPOTS))
def test_a_corrupted_copy_of_a_study_fails_the_recompute(case: str, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(QA_STUDY, study)
    corrupt, expected = BLIND_SPOTS[case]
    corrupt(study)
    check = Recompute(study, data_dir())
    check.run()
    check.check_report()
    assert any(expected in p for p in check.problems), check.problems[:8]
