"""The comparison report: per task and language, base vs zero-shot transfer vs Self-Translate-Train.

Writes `results.parquet` (one row per task x language), `report.md` and `plot.png` into the run
directory. Every number comes from an evaluation manifest, whose predictions file holds the items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from stt.arms import COMPARISONS, GAIN_SHOWN, MODEL_COLUMNS, SHOWN
from stt.errors import DataError
from stt.files import atomic_path, write_parquet_atomic, write_text_atomic
from stt.scoring import default_metric, item_scores
from stt.stats import (
    RESAMPLES,
    SEED,
    Difference,
    Interval,
    SeededDifference,
    SeededInterval,
    bootstrap_ci,
    holm,
    paired_bootstrap,
    seeded_ci,
    seeded_paired,
)

ALPHA = 0.05  # family-wise error rate of the declared comparisons (Holm)


Scores = dict[tuple[str, str, str, str], pd.Series]  # one report's per-item scores, each file read once


def _item_scores(path: str, task: str, language: str, metric: str, read: Scores | None = None) -> pd.Series:
    """Per-item scores of `metric`, recomputed from the saved rows (labels read from the file's gold).
    `read`: the scores this report has read already (a cache for one report, never across reports: a file
    rewritten under a new key keeps its path)."""
    if read is not None and (path, task, language, metric) in read:
        return read[(path, task, language, metric)]
    rows = pd.read_parquet(path).to_dict("records")
    scores = pd.Series(item_scores(task, language, rows)[metric], index=[r["index"] for r in rows])
    if read is not None:
        read[(path, task, language, metric)] = scores
    return scores


def _aligned(series: list[pd.Series], where: str) -> pd.DataFrame:
    """Per-item scores of several evaluations on the same items: one row per evaluation."""
    index = series[0].index
    for other in series[1:]:
        common = index.intersection(other.index)
        if len(common) != len(index) or len(common) != len(other):
            raise DataError(f"{where}: the models scored different items ({len(index)} vs {len(other)}, "
                            f"{len(common)} shared): a gain needs the same items")
    return pd.DataFrame([s.loc[index].to_numpy() for s in series], columns=index)


def compare(new: dict[int | None, pd.Series], base: dict[int | None, pd.Series], resamples: int = RESAMPLES,
            seed: int = SEED, where: str = "") -> Difference | SeededDifference:
    """new - baseline, paired on items, and on training seeds when there are several: seed k of one arm
    against seed k of the other (the base model, trained by nobody, stands against every seed).
    Per-item scores by seed (None: the base model)."""
    seeds = sorted(k for k in new if k is not None) or [None]
    if set(base) != {None} and set(base) != set(new):
        raise DataError(f"{where}: the two arms were trained with different seeds ({sorted(new)} vs {sorted(base)})")
    rows = _aligned([new[k] for k in seeds] + [base.get(k, base.get(None)) for k in seeds], where).to_numpy()
    n = len(seeds)
    if n == 1:
        return paired_bootstrap(rows[1], rows[0], resamples, seed)
    return seeded_paired(rows[n:], rows[:n], resamples, seed)


def _score(by_seed: dict[int | None, pd.Series], resamples: int, seed: int, where: str
           ) -> Interval | SeededInterval:
    seeds = sorted(by_seed, key=lambda k: -1 if k is None else k)
    values = _aligned([by_seed[k] for k in seeds], where).to_numpy()
    if len(seeds) == 1:
        return bootstrap_ci(values[0], resamples, seed)
    return seeded_ci(values, resamples, seed)


def _seed_fields(prefix: str, stat: Interval) -> dict[str, Any]:
    if not isinstance(stat, SeededInterval):
        return {f"{prefix}_seeds": 1}
    return {f"{prefix}_seeds": stat.seeds, f"{prefix}_seed_sd": stat.seed_sd,
            f"{prefix}_per_seed": json.dumps(stat.per_seed)}


def results_table(evaluations: list[dict[str, Any]], quality: list[dict[str, Any]], resamples: int = RESAMPLES,
                  seed: int = SEED, primary: dict[str, str] | None = None, read: Scores | None = None
                  ) -> pd.DataFrame:
    """Rows: (task, language). Per model column: the primary metric (`primary`: task -> metric, default the
    task's, see TaskSpec.primary_choices), recomputed from the predictions: over one seed, the mean with a
    bootstrap interval over items; over several training seeds (`seed` of each evaluation), the mean over
    seeds with a two-level interval (seeds, then items), the seeds' standard deviation and each seed's score.
    Per comparison: the paired gain (items and seeds), its interval, raw and Holm-adjusted p-value (over
    every comparison in the table), significance at the adjusted p. Translation chrF and BLEU (tokenizer)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    per_item: dict[tuple[str, str, str], dict[int | None, pd.Series]] = {}
    by_label = {label: column for column, label in MODEL_COLUMNS.items()}
    for e in evaluations:
        if e.get("trained_for"):
            continue  # an adapter of another language on the English test: english_reference()
        task, language = e["task"], e["language"]
        metric = (primary or {}).get(task) or default_metric(task)
        row = rows.setdefault((task, language), {"task": task, "language": language, "metric": metric,
                                                 "n": e["scores"]["n"]})
        column = by_label.get(e["model"])
        if column is None:
            continue
        predictions = str(Path(e["folder"]) / "predictions.parquet")
        seeds = per_item.setdefault((task, language, column), {})
        if e.get("seed") in seeds:
            raise DataError(f"{task} {language}: two evaluations of {e['model']} with training seed {e.get('seed')}")
        seeds[e.get("seed")] = _item_scores(predictions, task, language, metric, read)
        by_seed_paths = json.loads(row.get(f"{column}_predictions_by_seed", "{}"))
        row[f"{column}_predictions_by_seed"] = json.dumps({**by_seed_paths, str(e.get("seed")): predictions})
        if len(seeds) == 1:  # the first replicate's files and secondary scores stand for the column
            row[f"{column}_scores"] = json.dumps({k: v for k, v in e["scores"].items() if isinstance(v, float)})
            row[f"{column}_predictions"] = predictions
    for (task, language, column), by_seed in per_item.items():
        row = rows[(task, language)]
        ci = _score(by_seed, resamples, seed, f"{task} {language} {MODEL_COLUMNS[column]}")
        row[column], row[f"{column}_lo"], row[f"{column}_hi"] = round(ci.value, 2), ci.lo, ci.hi
        row[f"{column}_n"] = ci.n
        row.update(_seed_fields(column, ci))
        row["n"] = max(row["n"], ci.n)
    family = _compare_columns(rows, per_item, resamples, seed)
    for q in quality:
        row = rows.get((q["task"], q["language"]))
        if row is not None:
            row["chrf"], row["bleu"] = q["scores"]["chrf"], q["scores"]["bleu"]
            row["bleu_tokenizer"] = q["scores"].get("bleu_tokenizer")
    return _frame(list(rows.values()), len(family), resamples, seed)


def _compare_columns(rows: dict[tuple[str, str], dict[str, Any]],
                     per_item: dict[tuple[str, str, str], dict[int | None, pd.Series]], resamples: int, seed: int
                     ) -> list[tuple[dict[str, Any], str]]:
    """Every declared comparison whose two columns were evaluated, paired on the same items, written into its
    row with raw and Holm-adjusted p-values (over the whole table); the English `learned` reference beside.
    Returns the Holm family: (row, comparison) pairs."""
    family: list[tuple[dict[str, Any], str]] = []
    for (task, language), row in rows.items():
        for name, new, baseline in COMPARISONS:
            if (task, language, new) in per_item and (task, language, baseline) in per_item:
                d = compare(per_item[(task, language, new)], per_item[(task, language, baseline)], resamples, seed,
                            where=f"{task} {language}: {MODEL_COLUMNS[new]} vs {MODEL_COLUMNS[baseline]}")
                row[name], row[f"{name}_lo"], row[f"{name}_hi"] = round(d.value, 2), d.lo, d.hi
                row[f"{name}_p"] = d.p_value
                row.update(_seed_fields(name, d))
                family.append((row, name))
        if language == "en" and (task, language, "zero_shot") in per_item and (task, language, "base") in per_item:
            # The English reference: how much fine-tuning taught the task at all. Not a claim about the method,
            # so outside the Holm family.
            d = compare(per_item[(task, language, "zero_shot")], per_item[(task, language, "base")], resamples,
                        seed, where=f"{task} en: zero-shot vs base")
            row["learned"], row["learned_lo"], row["learned_hi"], row["learned_p"] = d.value, d.lo, d.hi, d.p_value
            row.update(_seed_fields("learned", d))
    for (row, name), adjusted in zip(family, holm([row[f"{name}_p"] for row, name in family]), strict=True):
        row[f"{name}_p_holm"], row[f"{name}_significant"] = adjusted, adjusted < ALPHA
    return family


def _frame(rows: list[dict[str, Any]], family_size: int, resamples: int, seed: int) -> pd.DataFrame:
    """The table: every column present (NaN where not evaluated), English first, in the declared order."""
    df = pd.DataFrame(rows)
    for column in [*MODEL_COLUMNS, *(c for c, *_ in COMPARISONS), "chrf", "bleu"]:
        for suffix in ("", "_lo", "_hi") if column not in ("chrf", "bleu") else ("",):
            if column + suffix not in df:
                df[column + suffix] = float("nan")
    df["bootstrap_seed"], df["bootstrap_resamples"], df["comparisons_in_family"] = seed, resamples, family_size
    df["comparisons"] = json.dumps(COMPARISONS)  # (gain, new column, baseline column): readable without stt
    order = ["task", "language", "metric", "n", *MODEL_COLUMNS, *(c for c, *_ in COMPARISONS), "chrf", "bleu"]
    rest = [c for c in df.columns if c not in order]
    df["_en"] = df["language"] != "en"  # English first: the language the model was fine-tuned in
    df = df.sort_values(["task", "_en", "language"]).drop(columns="_en").reset_index(drop=True)
    return df[order + rest]


def english_reference(evaluations: list[dict[str, Any]], resamples: int = RESAMPLES, seed: int = SEED,
                      primary: dict[str, str] | None = None, read: Scores | None = None) -> pd.DataFrame:
    """Every model scored on the English test (the language all adapters saw most): base, zero-shot and
    each target language's adapters, on the primary metric, over seeds where there are several."""
    groups: dict[tuple[str, str, str], dict[int | None, pd.Series]] = {}
    for e in evaluations:
        if e["language"] != "en":
            continue
        task, metric = e["task"], (primary or {}).get(e["task"]) or default_metric(e["task"])
        model = e["model"] + (f" ({e['trained_for']})" if e.get("trained_for") else "")
        groups.setdefault((task, model, metric), {})[e.get("seed")] = _item_scores(
            str(Path(e["folder"]) / "predictions.parquet"), task, "en", metric, read)
    rows = []
    for (task, model, metric), by_seed in groups.items():
        ci = _score(by_seed, resamples, seed, f"{task} en {model}")
        rows.append({"task": task, "model (trained for)": model, "metric": metric, "n": ci.n,
                     "English score": _fmt(ci.value, ci.lo, ci.hi) + (
                         f" sd {ci.seed_sd:.1f}/{ci.seeds}" if isinstance(ci, SeededInterval) else "")})
    return pd.DataFrame(rows)


def _fmt(v: object, lo: object, hi: object, signed: bool = False) -> str:
    if not isinstance(v, int | float) or v != v:
        return "-"  # a model not run for a language shows "-", not nan
    sign = "+" if signed and v > 0 else ""
    if isinstance(lo, int | float) and lo == lo:
        return f"{sign}{v:.1f} [{lo:.1f}, {hi:.1f}]"
    return f"{sign}{v:.1f}"


def _sd(df: pd.DataFrame, column: str, i: int) -> str:
    """` sd 2.1/3` after a score over several training seeds: the seeds' standard deviation and count."""
    sd, k = df.get(f"{column}_seed_sd"), df.get(f"{column}_seeds")
    if sd is None or k is None or sd.iloc[i] != sd.iloc[i] or k.iloc[i] != k.iloc[i] or k.iloc[i] < 2:
        return ""
    return f" sd {sd.iloc[i]:.1f}/{int(k.iloc[i])}"


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table people read: score [95% CI] per model, gains with CI, p-value and significance."""
    out = df[["task", "language", "metric", "n"]].copy()
    for column, title in SHOWN.items():
        if df[column].notna().any():
            out[title] = [_fmt(v, lo, hi) + _sd(df, column, i)
                          for i, (v, lo, hi) in enumerate(zip(df[column], df[f"{column}_lo"], df[f"{column}_hi"],
                                                              strict=True))]
    for name, *_ in COMPARISONS:
        if df[name].notna().any():
            cells = []
            for v, lo, hi, p, adj in zip(df[name], df[f"{name}_lo"], df[f"{name}_hi"], df[f"{name}_p"],
                                         df[f"{name}_p_holm"], strict=True):
                if v != v:
                    cells.append("-")
                    continue
                mark = "" if adj < ALPHA else " n.s."
                cells.append(f"{_fmt(v, lo, hi, signed=True)}{_sd(df, name, len(cells))} p={p:.3f} "
                             f"(Holm {adj:.3f}){mark}")
            out[GAIN_SHOWN[name]] = cells
    out["translation chrF"] = [("-" if v != v else f"{v:.1f}") for v in df["chrf"]]
    return out


def plot(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(df["task"]))
    quality = df[df["chrf"].notna() & df["gain"].notna()]
    panels = len(tasks) + (1 if len(quality) else 0)
    fig, axes = plt.subplots(1, panels, figsize=(max(7, 3.5 + 2.2 * len(df) + 2 * bool(len(quality))), 4.2),
                             squeeze=False)
    if len(quality):  # the paper's observation: the gain tracks how well the model translates
        ax = axes[0][-1]
        err = [quality["gain"] - quality["gain_lo"], quality["gain_hi"] - quality["gain"]]
        ax.errorbar(quality["chrf"], quality["gain"], yerr=err, fmt="o", capsize=4)
        for _, r in quality.iterrows():
            ax.annotate(f"{r['task']} {r['language']}", (r["chrf"], r["gain"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("translation chrF (en->X)")
        ax.set_ylabel("gain over zero-shot (points, 95% CI)")
        ax.set_title("gain vs translation quality")
    for ax, task in zip(axes[0], tasks, strict=False):
        sub = df[df["task"] == task]
        columns = [c for c in MODEL_COLUMNS if sub[c].notna().any()]
        width = 0.8 / len(columns)
        x = range(len(sub))
        for k, column in enumerate(columns):
            values = sub[column]
            err = [(values - sub[f"{column}_lo"]).fillna(0).clip(lower=0),
                   (sub[f"{column}_hi"] - values).fillna(0).clip(lower=0)]
            ax.bar([i + k * width for i in x], values.fillna(0), width, yerr=err, capsize=2, label=SHOWN[column])
            if f"{column}_per_seed" in sub:  # every training seed's own score, over its bar
                for i, points in zip(x, sub[f"{column}_per_seed"], strict=True):
                    if isinstance(points, str):
                        ys = json.loads(points)
                        ax.plot([i + k * width] * len(ys), ys, "k.", ms=4, zorder=3)
        ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in x])
        ax.set_xticklabels(sub["language"])
        ax.set_title(f"{task} ({sub['metric'].iloc[0]}, n={int(sub['n'].max())}, 95% CI)")
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the name may be a temp name without .png
    plt.close(fig)
    return path


def adapter_manifests(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> adapter name -> its manifest, for every finished adapter under a run folder."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for marker in sorted(Path(root).glob("*/adapters/*/_manifest.json")):
        found.setdefault(marker.parent.parent.parent.name, {})[marker.parent.name] = json.loads(marker.read_text())
    return found


def steps_check(adapters: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Are the arms matched? Per task, every adapter with its optimizer steps; matched when all took the same
    number (train.max_steps: one step budget for every arm, whatever its set's size)."""
    lines = []
    for task, manifests in adapters.items():
        steps, batch = {}, 0
        for name, m in manifests.items():
            if "steps" in m.get("metrics", {}):
                steps[name] = m["metrics"]["steps"]
                train = m.get("config", {})
                batch = train.get("batch_size", 0) * train.get("gradient_accumulation", 1)
        if not steps:
            continue
        listing = ", ".join(f"{k} {v}" for k, v in steps.items())
        if len(set(steps.values())) == 1:
            lines.append(f"Matched arms, {task}: every adapter took {next(iter(steps.values()))} optimizer steps of "
                         f"{batch} rows (train.max_steps is the shared step budget; a smaller set is cycled through "
                         f"more epochs): {listing}.")
        else:
            lines.append(f"Arms **not matched** in training, {task}: optimizer steps per adapter: {listing}. A gain "
                         "between two arms mixes their data with their amount of training; set train.max_steps to "
                         "give every arm one step budget.")
    return lines


def training_notes(adapters: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Rows set aside or shortened by train.max_length, per adapter (from the adapters' metrics)."""
    notes = []
    for task, name, manifest in ((t, n, m) for t, by_name in adapters.items() for n, m in by_name.items()):
        m = manifest.get("metrics", {})
        aside, short = m.get("set_aside") or {}, m.get("prompts_shortened") or 0
        if aside or short:
            what = ", ".join(f"{v} {k}" for k, v in aside.items()) or "none"
            notes.append(f"Adapter `{task}/{name}`: {m.get('examples')} of "
                         f"{m.get('rows')} rows trained on; set aside (would lose the answer): {what}; prompts "
                         f"shortened to fit max_length: {short}.")
    return notes


def translation_notes(root: Path) -> list[str]:
    """Per task and language: examples translated, rows accepted, set aside by reason (from the manifests)."""
    from stt.stages.translate import summarize

    notes = []
    for manifest in sorted(Path(root).glob("*/translate/_manifest.json")):
        config = json.loads(manifest.read_text()).get("config", {})
        filtering = config.get("round_trip", {})
        for s in summarize(manifest.parent):
            line = (f"Translation `{manifest.parent.parent.name}` into {s['language']}: {s['rows']} of {s['examples']} "
                    f"examples accepted; set aside: {s['rejects_by_reason']}.")
            if filtering.get("enabled"):
                limit = filtering.get("min_chrf_by_language", {}).get(s["language"], filtering.get("min_chrf"))
                line += (f" Round-trip filter (chrF < {limit}): {s['round_trip_set_aside']} rows "
                         f"set aside; mean round-trip chrF {s['round_trip_chrf']}.")
            notes.append(line)
    return notes


def _interval_note(df: pd.DataFrame, resamples: int, seed: int) -> str:
    seeded = [c for c in df.columns if c.endswith("_seeds") and (df[c].fillna(1) > 1).any()]
    if not seeded:
        return (f"Intervals: percentile bootstrap over test items, {resamples} resamples, seed {seed}. One training "
                "seed per adapter: the intervals hold the sampling of test items only, not the variance between "
                "training runs (set train.seeds to measure it).")
    k = int(max(df[c].max() for c in seeded))
    few = f"; with {k} seeds the seed part cannot reach beyond the observed seeds, so it understates the seed " \
        "uncertainty" if k < 5 else ""
    return (f"Intervals: two-level percentile bootstrap over {k} training seeds and then test items (each resample "
            "draws the seeds with replacement and one sample of the test items with replacement, shared by every "
            "drawn seed: every seed was scored on the same items, and drawing them anew per seed would shrink the "
            f"items' share of the variance by the number of seeds{few}), {resamples} resamples, seed {seed}; "
            "gains are paired on seeds and items; `sd x/k` = the standard deviation of the k seeds' scores. The "
            "plot shows each seed's score as a dot.")


def bleu_notes(df: pd.DataFrame) -> list[str]:
    """Which BLEU tokenizer each language's score used (word-based BLEU on unsegmented scripts is meaningless)."""
    if "bleu_tokenizer" not in df:
        return []
    used = {r["language"]: r["bleu_tokenizer"] for _, r in df.iterrows() if isinstance(r.get("bleu_tokenizer"), str)}
    if not used:
        return []
    return ["Translation BLEU (sacrebleu) tokenizer per language: " + ", ".join(f"{k}: `{v}`" for k, v in
            sorted(used.items())) + "; chrF needs no tokenizer and is the translation score the plot uses."]


def _markdown_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def _gain_text(row: pd.Series, name: str) -> str:
    return (f"{_fmt(row[name], row[f'{name}_lo'], row[f'{name}_hi'], signed=True)} points, p = {row[f'{name}_p']:.3f}"
            f" (Holm {row[f'{name}_p_holm']:.3f})")


# The positive controls (gold target-language data against zero-shot), strongest dose first.
POSITIVE_CONTROLS = (("human_all_gain", "human translations of every training item, with English 1:1"),
                     ("human_only_gain", "human translations of every training item, alone"),
                     ("human_gain", "human translations of the items the self-translation passed"))


def design_checks(df: pd.DataFrame) -> list[str]:
    """What the report must say before any claim about Self-Translate-Train: whether the design could have
    detected target-language training data (the positive control: human translate-train over zero-shot on
    the primary metric) and how much the adapters learned the task in English (the reference)."""
    lines = []
    for _, row in df.iterrows():
        where = f"{row['task']} {row['language']} ({row['metric']})"
        if row["language"] == "en":
            if row.get("learned") == row.get("learned"):
                learned = row["learned_lo"] > 0
                lines.append(f"English reference, {where}: zero-shot - base = "
                             f"{_fmt(row['learned'], row['learned_lo'], row['learned_hi'], signed=True)} points "
                             f"(p = {row['learned_p']:.3f}, outside the Holm family): the English adapter "
                             f"{'learned' if learned else 'did not measurably learn'} the task in the language it "
                             "was trained in.")
            continue
        ran = [(c, label) for c, label in POSITIVE_CONTROLS if c in row and row[c] == row[c]]
        if not ran:
            lines.append(f"Positive control, {where}: not run (controls.human_translate_train off, no human arm in "
                         "build.sets, or no human translations for this task): nothing shows that this design can "
                         "detect a gain from target-language training data, so a null Self-Translate-Train result "
                         "is not evidence of no effect.")
            continue
        passed = [c for c, _ in ran if row[c] > 0 and bool(row[f"{c}_significant"])]
        for c, label in ran:
            lines.append(f"Positive control, {where}, {label}: **{'passed' if c in passed else 'failed'}** "
                         f"({_gain_text(row, c)}).")
        if not passed:
            lines.append(f"No positive control passed for {where}: gold target-language data does not measurably "
                         "beat zero-shot here, so this run **cannot judge Self-Translate-Train** for this task and "
                         "language.")
    return lines


def primary_metric_line(used: dict[str, str], config: dict[str, Any]) -> str:
    """Which metric each task's numbers use, and whether the config declared it or it is the task's default."""
    declared = (config.get("eval") or {}).get("primary_metric") or {}
    metrics = ", ".join(f"{t}: `{m}` ({'declared in the config' if t in declared else 'the task default'})"
                        for t, m in used.items())
    return (f"Primary metric, fixed before the run (`eval.primary_metric`, else the task's default): {metrics}. "
            "Every score, interval, gain, p-value and the plot use it.")


def markdown(df: pd.DataFrame, config: dict[str, Any], notes: list[str], checks: list[str] | None = None,
             english: pd.DataFrame | None = None) -> str:
    """The report: `checks` (design_checks, steps_check) first, then the table, the English reference
    (english_reference) and the notes."""
    checks = checks if checks is not None else design_checks(df)
    english = english if english is not None else pd.DataFrame()
    lines = [f"# Self-Translate-Train: {config.get('name', 'run')}", "",
             f"Model `{config['engine']['model']}`, languages {', '.join(config['languages'])}, "
             f"tasks {', '.join(config['tasks'])}.", "",
             primary_metric_line(dict(zip(df["task"], df["metric"], strict=True)), config), "",
             "## Design checks (read these first)", "", *[f"- {c}" for c in checks], "",
             "## Results", "",
             "Columns: the task metric (%) with its 95% bootstrap interval over test items, of the base model, "
             "zero-shot transfer (LoRA on English only), the controls that are enabled (zero-shot trained for as "
             "many optimizer steps as Self-Translate-Train; English + human translations of the same items; "
             "translate-test) and Self-Translate-Train (LoRA on English + the model's own translations into the "
             "row's language). Gains are paired over the same items: difference [95% CI], two-sided bootstrap "
             "p-value and its Holm adjustment over every comparison in the table (`comparisons_in_family` in "
             "`results.parquet`); `n.s.` = the Holm-adjusted p is at least 0.05. Translation chrF = the model's en->X "
             "translation of human-translated test items, scored against the human translation.", "",
             "Metrics: MGSM accuracy (final number, read with the language's number format); XNLI calibrated "
             "accuracy (`accuracy_calibrated`: per-label biases fitted by prior matching on the other half of the "
             "test inputs, no label used, see stt.calibration; raw `accuracy` = the label with the highest summed "
             "log-likelihood, lm-evaluation-harness `acc`; `accuracy_norm`, `macro_f1` and `macro_f1_calibrated` "
             "in each column's scores in `results.parquet`); XQuAD F1 with the official SQuAD v1.1 "
             "normalisation (exact match and, for "
             "zh/th, character F1 in `results.parquet`).", "",
             _markdown_table(display_table(df)), ""]
    if len(english):
        lines += ["## English reference", "", "Every model on the English test (the language every adapter "
                  "saw most; target-language adapters in parentheses): how much each learned the task at all.", "",
                  _markdown_table(english), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "![results](plot.png)", "", "Per-item predictions: the `*_predictions` columns of "
              "`results.parquet`. Full config: `config.json`."]
    return "\n".join(lines)


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as saved with its results: `eval.primary_metric` names every task's primary metric, the
    declared ones and the task defaults alike, so the saved config says what every number was computed on (and
    runs again on the same metrics). The report says which were declared."""
    ev = dict(config.get("eval") or {})
    declared = ev.get("primary_metric") or {}
    ev["primary_metric"] = {t: declared.get(t) or default_metric(t) for t in config.get("tasks", [])}
    return {**config, "eval": ev}


def write_report(root: Path, evaluations: list[dict[str, Any]], quality: list[dict[str, Any]],
                 config: dict[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ev = config.get("eval", {})
    resamples, seed = ev.get("bootstrap_resamples", RESAMPLES), ev.get("bootstrap_seed", SEED)
    primary, read = ev.get("primary_metric") or {}, {}
    df = results_table(evaluations, quality, resamples, seed, primary, read)
    english = english_reference(evaluations, resamples, seed, primary, read)
    adapters = adapter_manifests(root)
    notes = [*(notes or []), *translation_notes(root), *training_notes(adapters),
             _interval_note(df, resamples, seed),
             *bleu_notes(df)]
    # Atomic writes (temp + rename): a run killed here leaves the previous report or none, never half of one.
    write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), root / "results.parquet")
    with atomic_path(root / "plot.png") as tmp_plot:
        plot(df, tmp_plot)
    md = markdown(df, config, notes or [], design_checks(df) + steps_check(adapters), english)
    write_text_atomic(root / "report.md", md)
    write_text_atomic(root / "config.json", json.dumps(resolved_config(config), indent=2, default=str))
    return {"results": str(root / "results.parquet"), "report": str(root / "report.md"),
            "plot": str(root / "plot.png"), "markdown": md, "table": display_table(df)}
