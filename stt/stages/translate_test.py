"""Translate-test (Etxaniz et al. 2023), a control and a stage of its own: the base model translates each test
input into English with the translate stage's few-shot prompt (demonstrations reversed), then the English
adapter answers it; one job per (language, seed), run with the other evaluations (the `translate_test` column).

The translated inputs are saved (`inputs_en.parquet`: every segment's source and output) under their
own key, so the answering step can be redone without translating again; the predictions are the evaluate
stage's `predict` on the translated items, scored against the original gold answers. The runner keeps the
folder (its marker holds the job's key, which covers both).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from stt import files, markers, segments, shards, timeouts
from stt.config import EvalConfig, GenerationParams, PromptConfig, RunConfig, TimeoutConfig
from stt.engine_settings import EngineConfig
from stt.engines import Request, engine_signature, get_engine
from stt.errors import ConfigError
from stt.models import resolve_model
from stt.prompts import build_prompt_builder
from stt.specs import get_task, test_items
from stt.stages.base import Job
from stt.stages.evaluate import Evaluate, eval_engine, evaluate_key, predict
from stt.stages.evaluate import Inputs as EvaluateInputs
from stt.validate import clean_completion

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan

log = logging.getLogger(__name__)

INPUTS_FILE = "inputs_en.parquet"


def fields(task: str) -> dict[str, segments.SplitMode]:
    """The input fields of the task's test items that are translated (TaskSpec.translate_test_fields)."""
    return get_task(task).translate_test_fields or {}


def inputs_key(task: str, language: str, items: list[dict[str, Any]], engine_config: EngineConfig,
               generation: GenerationParams, prompt: PromptConfig, data_dir: Path) -> str:
    builder = build_prompt_builder(language, prompt, data_dir, to_english=True)
    return markers.stage_key(stage="translate-test-inputs", task=get_task(task).key_id, language=language,
                            weights=resolve_model(engine_config.model).weights_sha256,
                            engine=engine_signature(engine_config), prefix=builder.completion_prompt(""),
                            prompt_version=builder.version, generation=generation.model_dump(mode="json"),
                            items=items)


def translate_test_key(task: str, language: str, translator: EngineConfig, answerer: EngineConfig,
                       config: EvalConfig, generation: GenerationParams, prompt: PromptConfig, data_dir: Path) -> str:
    """Everything a translate-test result depends on, known before running (the Prefect cache key)."""
    items = test_items(task, data_dir, language, config)
    return markers.stage_key(stage="translate-test", inputs=inputs_key(task, language, items, translator, generation,
                                                                      prompt, data_dir),
                            answer=evaluate_key(task, language, answerer, config, data_dir, items=items))


def translate_inputs(task: str, language: str, items: list[dict[str, Any]], engine_config: EngineConfig,
                     generation: GenerationParams, prompt: PromptConfig, data_dir: Path, out_folder: Path
                     ) -> tuple[list[dict[str, Any]], str]:
    """The items with their input fields translated into English (reused from disk when the key matches)."""
    if not fields(task):  # extractive QA would answer with an English span, not one of the context
        raise ConfigError(f"translate-test is defined for gsm8k and mnli, not '{task}' (extractive QA would answer "
                          "with an English span; a declared task has none)")
    builder = build_prompt_builder(language, prompt, data_dir, to_english=True)
    key = inputs_key(task, language, items, engine_config, generation, prompt, data_dir)
    path = Path(out_folder) / INPUTS_FILE
    if path.is_file() and shards.read_metadata(path).get("stt.key") == key:
        rows = pq.read_table(path).to_pylist()
    else:
        engine = get_engine(engine_config, generation)
        plan = [(i, field, k, text) for i, it in enumerate(items) for field, mode in fields(task).items()
                for k, text in enumerate(segments.split(it[field], mode))]
        requests = [Request(builder.completion_prompt(text),
                            generation.max_new_tokens(engine.count_tokens(text)), generation.stop)
                    for *_, text in plan]
        outs = engine.generate(requests)
        rows = [{"item": i, "field": field, "segment": k, "source": text, "raw": o.text,
                 "output": clean_completion(o.text, "English", generation.stop, builder.source_name),
                 "finish_reason": o.finish_reason}
                for (i, field, k, text), o in zip(plan, outs, strict=True)]
        files.write_parquet_atomic(pa.Table.from_pylist(rows), path, {"stt.key": key})
    translated = [dict(it) for it in items]
    for field, mode in fields(task).items():
        parts: dict[int, list[str]] = {}
        for r in sorted((r for r in rows if r["field"] == field), key=lambda r: (r["item"], r["segment"])):
            parts.setdefault(r["item"], []).append(r["output"])
        for i, it in enumerate(translated):
            it[field] = segments.join(parts.get(i, []), mode, "en")
    return translated, key


class Inputs(EvaluateInputs):  # engine: the answerer, the English adapter
    translator: EngineConfig  # the base model, as in the translate stage
    generation: GenerationParams
    prompt: PromptConfig


class TranslateTest(Evaluate):
    name = "translate-test"
    Inputs = Inputs

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        data_dir = config.resolved_data_dir()
        translator = config.engine.model_copy(update={"adapter": None})
        return [self.job(plan.task, e.name, plan.eval_dir(e),
                         Inputs(task=plan.task, language=e.language, label=e.model, engine=eval_engine(config, plan, e),
                                eval=config.eval, data_dir=data_dir, translator=translator,
                                generation=config.generation, prompt=config.prompt),
                         config.timeouts) for e in plan.evals if e.translate_test]

    def key(self, i: Inputs) -> str:  # type: ignore[override]
        return translate_test_key(i.task, i.language, i.translator, i.engine, i.eval, i.generation, i.prompt,
                                  i.data_dir)

    # The answers; the translated inputs are stamped with their own key and kept across a redo, so a change
    # that only touches the answering (the adapter, the eval settings) does not translate again.
    outputs = ("predictions.parquet",)

    def make(self, i: Inputs, folder: Path, key: str) -> tuple[list[str], dict[str, Any]]:  # type: ignore[override]
        """Translate the test inputs into English with the translator (the base model), answer with the
        engine (the English adapter), score against the original gold answers."""
        items = test_items(i.task, i.data_dir, i.language, i.eval)
        translated, inputs_key_ = translate_inputs(i.task, i.language, items, i.translator, i.generation, i.prompt,
                                                   i.data_dir, folder)
        empty = sum(not it[f] for it in translated for f in fields(i.task))
        if empty:
            log.warning("translate-test %s %s: %d empty translated fields (answered as they are)", i.task,
                        i.language, empty)
        answers_key = evaluate_key(i.task, i.language, i.engine, i.eval, i.data_dir, translated)
        files_, record = predict(i.task, i.language, i.engine, i.eval, folder, answers_key, "translate-test",
                                 translated, output_language="en")
        return [*files_, INPUTS_FILE], {**record, "translated_inputs": INPUTS_FILE, "inputs_key": inputs_key_,
                                        "answers_key": answers_key, "empty_translations": empty,
                                        "translator": json.loads(i.translator.model_dump_json())}

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:  # type: ignore[override]
        return timeouts.evaluation_timeout_s(i.task, i.eval, timeouts_, i.data_dir, i.language,
                                             i.generation.max_new_tokens_cap)

    def engine_kept(self, i: Inputs) -> EngineConfig | None:  # type: ignore[override]
        return None  # two models per job: the translator, then the answerer


STAGE = TranslateTest()
