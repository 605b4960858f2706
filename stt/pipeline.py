"""The whole method as a plan of stage calls: translate -> quality -> build sets -> fine-tune -> evaluate -> report.

`plan_task` says which sets, adapters and evaluations a config asks for, and where each lives in the
run directory; each stage of `stt/stages/` turns it into its jobs, which `stt.jobs` runs (the plain runner;
the Prefect stage flows and the fan-out over workers run the same jobs).

    <run_dir>/<task>/translate/            translate stage shards (see stt.translate)
    <run_dir>/<task>/quality/<lang>/       the model's translations of human-translated test items + chrF
    <run_dir>/<task>/sets/<set>/           training sets (english, self-translate-train-de, ...)
    <run_dir>/<task>/adapters/<set>/       LoRA adapters + loss curves
    <run_dir>/<task>/eval/<model>-<lang>/  predictions + scores
    <run_dir>/report.md, results.parquet, plot.png, config.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stt import markers
from stt.arms import MODEL_OF_SET
from stt.config import RunConfig, SetKind
from stt.errors import DataError
from stt.specs import get_task
from stt.trainsets import has_human, set_name, training_source

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SetJob:
    kind: SetKind
    language: str | None  # None for the English-only set
    name: str


@dataclass(frozen=True)
class AdapterJob:
    name: str  # the adapter's folder under adapters/
    set_name: str
    # Train for as many optimizer steps as this other adapter took (the equal-steps control).
    steps_like: str | None = None
    seed: int = 0  # train.seed of this replicate


@dataclass(frozen=True)
class EvalJob:
    model: str  # base | zero-shot | zero-shot-equal-steps | self-translate-train | code-switch | ... | translate-test
    adapter: str | None  # the adapter's folder name; None for the base model
    language: str
    translate_test: bool = False  # inputs translated into English by the base model first
    seed: int | None = None  # the adapter's training seed (None: the base model, trained by nobody)
    replicate: str = ""  # folder-name suffix of a replicate after the first (".seed1")
    trained_for: str | None = None  # an adapter of another language scored here (the English reference)

    @property
    def name(self) -> str:
        of = f"-{self.trained_for}-on" if self.trained_for else ""
        return f"{self.model}{of}-{self.language}{self.replicate}"


def replicate_suffix(config: RunConfig, seed: int) -> str:
    """The first seed's adapters and evaluations keep their plain names (a one-seed run is unchanged, and
    adding seeds to a run reuses its first replicate); the others get `.seed<k>`."""
    return "" if seed == config.train.replicate_seeds()[0] else f".seed{seed}"


@dataclass(frozen=True)
class TaskPlan:
    task: str
    root: Path
    sets: tuple[SetJob, ...]
    adapters: tuple[AdapterJob, ...]
    evals: tuple[EvalJob, ...]

    def set_dir(self, name: str) -> Path:
        return self.root / "sets" / name

    def adapter_dir(self, name: str) -> Path:
        return self.root / "adapters" / name

    def eval_dir(self, job: EvalJob) -> Path:
        return self.root / "eval" / job.name

    def quality_dir(self, language: str) -> Path:
        return self.root / "quality" / language

    @property
    def translate_dir(self) -> Path:
        return self.root / "translate"


def plan_task(config: RunConfig, task: str) -> TaskPlan:
    kinds = [k for k in config.build.sets if k != "english"]
    human = has_human(task, training_source(config.translate_config(task)))
    if config.controls.human_translate_train and human and "human-translate-train" not in kinds:
        kinds.append("human-translate-train")
    sets = [SetJob("english", None, "english")]
    sets += [SetJob(kind, lang, set_name(kind, lang)) for kind in kinds for lang in config.languages]
    stt_sets = {s.language: s.name for s in sets if s.kind == "self-translate-train"}
    eval_langs = (["en"] if config.eval.include_english else []) + list(config.languages)
    adapters: list[AdapterJob] = []
    evals = [EvalJob("base", None, lang) for lang in eval_langs]
    for seed in config.train.replicate_seeds():
        rep = replicate_suffix(config, seed)
        adapters += [AdapterJob(s.name + rep, s.name, seed=seed) for s in sets]
        evals += [EvalJob("zero-shot", "english" + rep, lang, seed=seed, replicate=rep) for lang in eval_langs]
        # Under a step budget (train.max_steps) every arm already trains as long as Self-Translate-Train: the
        # equal-steps control would be the zero-shot adapter again.
        if config.controls.equal_steps and not config.train.max_steps:
            for lang in (lang for lang in config.languages if lang in stt_sets):
                adapters.append(AdapterJob(f"english-steps-{lang}{rep}", "english", steps_like=stt_sets[lang] + rep,
                                           seed=seed))
                evals.append(EvalJob("zero-shot-equal-steps", f"english-steps-{lang}{rep}", lang, seed=seed,
                                     replicate=rep))
        # A language's Self-Translate-Train (and code-switch, human) model is scored in that language.
        evals += [EvalJob(MODEL_OF_SET[s.kind], s.name + rep, s.language, seed=seed, replicate=rep)
                  for s in sets if s.language]
        if config.controls.translate_test and get_task(task).translate_test_fields:
            evals += [EvalJob("translate-test", "english" + rep, lang, translate_test=True, seed=seed, replicate=rep)
                      for lang in config.languages]
        if config.eval.include_english and config.eval.adapters_on_english:
            # The English reference of every other adapter: scored on the English test too.
            evals += [EvalJob(e.model, e.adapter, "en", seed=seed, replicate=rep, trained_for=e.language)
                      for e in list(evals) if e.seed == seed and e.adapter and e.adapter != "english" + rep
                      and not e.translate_test and e.language != "en"]
    plan = TaskPlan(task, config.root / task, tuple(sets), tuple(adapters), tuple(evals))
    folders = [plan.root, plan.translate_dir, *(plan.set_dir(s.name) for s in plan.sets),
               *(plan.adapter_dir(a.name) for a in plan.adapters), *(plan.eval_dir(e) for e in plan.evals),
               *(plan.quality_dir(lang) for lang in config.languages)]
    for folder in folders:
        markers.inside(config.root, folder)
    return plan


def notes(config: RunConfig) -> list[str]:
    out = []
    for task in config.tasks:
        source = training_source(config.translate_config(task))
        out += get_task(task).notes(source)
        if config.controls.human_translate_train and not has_human(task, source):
            out.append(f"No human translate-train for {task}: its training items have no human translations.")
        if config.controls.translate_test and not get_task(task).translate_test_fields:
            out.append(f"No translate-test for {task}: its answers are not made from an English input alone (QA "
                       "would answer with an English span, not one of the context).")
    if config.train.max_steps:
        t = config.train
        note = (f"Step budget: every adapter trains for train.max_steps = {t.max_steps} optimizer steps of "
                f"{t.batch_size * t.gradient_accumulation} examples with the same schedule, whatever its set's size "
                "(train.epochs is not used)")
        out.append(note + (", so the equal-steps control (zero-shot trained as long as Self-Translate-Train) is the "
                           "zero-shot column itself and is not trained separately." if config.controls.equal_steps
                           else "."))
    if len(config.train.replicate_seeds()) > 1:
        out.append(f"Training seeds: {list(config.train.replicate_seeds())} (each adapter trained once per seed: "
                   "data order and LoRA initialisation); the base model is evaluated once.")
    if config.eval.limit and config.eval.sample_seed is not None:
        out.append(f"Evaluation on {config.eval.limit} test items per language drawn at random (seed "
                   f"{config.eval.sample_seed}; the same items in every language and column).")
    elif config.eval.limit:
        out.append(f"Evaluation on the first {config.eval.limit} test items of each language (the same items in "
                   "every language).")
    if config.limit:
        out.append(f"Training data: the first {config.limit} English training examples per task.")
    return out


def collect(config: RunConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The finished evaluations and translation-quality results of a run, read from its folders."""
    evaluations, quality = [], []
    for task in config.tasks:
        plan = plan_task(config, task)
        for job in plan.evals:
            evaluations.append({**_finished(plan.eval_dir(job), "evaluation", "evaluate-stage"), "seed": job.seed,
                                "trained_for": job.trained_for})
        if get_task(task).reference_field:  # a task without human translations has no quality stage
            for lang in config.languages:
                quality.append(_finished(plan.quality_dir(lang), "translation quality", "translate-stage"))
    return evaluations, quality


def _finished(folder: Path, what: str, stage: str) -> dict[str, Any]:
    marker = folder / markers.MARKER
    if not marker.is_file():
        raise DataError(f"{what} missing: {folder} has no {markers.MARKER} (run the {stage} flow first)")
    return {**json.loads(marker.read_text()), "folder": str(folder)}
