"""The whole method as a plan of stage calls: translate -> quality -> build sets -> fine-tune -> evaluate -> report.

`plan_task` says which sets, adapters and evaluations a config asks for, and where each lives in the
run directory; the Prefect flow and the plain-Python `run_pipeline` both follow it.

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

from stt import stages
from stt.config import EngineConfig, RunConfig, SetKind
from stt.errors import DataError
from stt.evaluate import evaluate
from stt.finetune import finetune
from stt.quality import translation_quality
from stt.report import write_report
from stt.trainsets import build_set, set_name
from stt.translate import run_translate

log = logging.getLogger(__name__)

# Which training set each evaluated model was fine-tuned on.
MODEL_OF_SET = {"english": "zero-shot", "self-translate-train": "self-translate-train", "code-switch": "code-switch"}


@dataclass(frozen=True)
class SetJob:
    kind: SetKind
    language: str | None  # None for the English-only set
    name: str


@dataclass(frozen=True)
class EvalJob:
    model: str  # base | zero-shot | self-translate-train | code-switch
    set_name: str | None  # the adapter's training set; None for the base model
    language: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.language}"


@dataclass(frozen=True)
class TaskPlan:
    task: str
    root: Path
    sets: tuple[SetJob, ...]
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
    sets = [SetJob("english", None, "english")]
    for kind in config.build.sets:
        if kind != "english":
            sets += [SetJob(kind, lang, set_name(kind, lang)) for lang in config.languages]
    eval_langs = (["en"] if config.eval.include_english else []) + list(config.languages)
    evals = [EvalJob("base", None, lang) for lang in eval_langs]
    evals += [EvalJob("zero-shot", "english", lang) for lang in eval_langs]
    # A language's Self-Translate-Train model is scored in that language.
    evals += [EvalJob(MODEL_OF_SET[s.kind], s.name, s.language) for s in sets if s.language]
    return TaskPlan(task, config.root / task, tuple(sets), tuple(evals))


def eval_engine(config: RunConfig, plan: TaskPlan, job: EvalJob) -> EngineConfig:
    adapter = plan.adapter_dir(job.set_name) if job.set_name else None
    return config.engine.model_copy(update={"adapter": adapter, "reuse_prefix_cache": False})


def notes(config: RunConfig) -> list[str]:
    out = []
    if "squad" in config.tasks and "squad" not in config.inputs:
        out.append("QA trains on the English XQuAD paragraphs of articles 0-23 (SQuAD train is not available "
                   "offline) and is evaluated on articles 24-47 only.")
    if config.eval.limit:
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
            evaluations.append(_finished(plan.eval_dir(job), "evaluation", "evaluate-stage"))
        for lang in config.languages:
            quality.append(_finished(plan.quality_dir(lang), "translation quality", "evaluate-stage"))
    return evaluations, quality


def _finished(folder: Path, what: str, stage: str) -> dict[str, Any]:
    marker = folder / stages.MARKER
    if not marker.is_file():
        raise DataError(f"{what} missing: {folder} has no {stages.MARKER} (run the {stage} flow first)")
    return {**json.loads(marker.read_text()), "folder": str(folder)}


def run_pipeline(config: RunConfig) -> dict[str, Any]:
    """The whole method in one process, without Prefect (the flow runs the same calls as tasks)."""
    data_dir = config.resolved_data_dir()
    evaluations, quality = [], []
    for task in config.tasks:
        plan = plan_task(config, task)
        run_translate(config.translate_config(task))
        for lang in config.languages:
            quality.append(translation_quality(task, lang, config.engine, config.generation, config.prompt, data_dir,
                                               plan.quality_dir(lang), config.eval.quality_limit))
        for s in plan.sets:
            build_set(task, s.kind, s.language, plan.translate_dir, plan.root / "sets", config.build)
            finetune(config.engine.model, plan.set_dir(s.name), plan.adapter_dir(s.name), config.train,
                     config.engine.device)
        for job in plan.evals:
            evaluations.append(evaluate(task, job.language, eval_engine(config, plan, job), config.eval, data_dir,
                                        plan.eval_dir(job), job.model))
    return write_report(config.root, evaluations, quality, json.loads(config.model_dump_json()), notes(config))
