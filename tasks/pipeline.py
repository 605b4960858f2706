"""Prefect tasks of the stages after translation. The work is in the `stt` modules they call.

Each task is cached on the content key its library function computes (upstream keys, weights,
configs), so changing only an evaluation setting reruns only the evaluations. When the stage's
folder is gone or damaged the cache is refreshed and the stage is redone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from stt import stages
from stt.config import BuildConfig, EngineConfig, EvalConfig, GenerationParams, PromptConfig, SetKind, TrainConfig
from stt.engines import release_engines
from stt.evaluate import evaluate as evaluate_lib
from stt.evaluate import evaluate_key
from stt.finetune import finetune as finetune_lib
from stt.finetune import finetune_key
from stt.quality import quality_key, translation_quality
from stt.report import write_report
from stt.trainsets import build_key, build_set
from stt.translate_test import translate_test as translate_test_lib
from stt.translate_test import translate_test_key
from tasks.model_slot import model_slot


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a task returns (and Prefect persists): small JSON, paths not rows."""
    return {k: v for k, v in info.items() if k != "files"}


def cached_on(key: str, folder: Path) -> dict[str, Any]:
    """Task options: cache on the stage key; refresh when the folder no longer holds that result."""
    return {"cache_key_fn": lambda *_: key, "refresh_cache": stages.read_done(folder, key) is None}


@task(name="build-dataset", task_run_name="build {task_name} {set_name}", retries=1, retry_delay_seconds=5,
      persist_result=True, result_serializer="json")
def build_dataset(task_name: str, set_name: str, kind: SetKind, language: str | None, translate_dir: str,
                  sets_root: str, config: BuildConfig, source: str | None = None) -> dict[str, Any]:
    info = build_set(task_name, kind, language, Path(translate_dir), Path(sets_root), config,
                     Path(source) if source else None)
    get_run_logger().info("%s: %d rows %s -> %s", info["set"], info["rows"], info["mixing"], info["folder"])
    return _summary(info)


def build_dataset_options(task_name: str, kind: SetKind, language: str | None, translate_dir: Path,
                          folder: Path, config: BuildConfig, source: Path | None = None) -> dict[str, Any]:
    return cached_on(build_key(task_name, kind, language, translate_dir, config, source), folder)


@task(name="finetune", task_run_name="finetune {set_name}", retries=1, retry_delay_seconds=30,
      persist_result=True, result_serializer="json")
def finetune(model: str, set_name: str, set_folder: str, adapter_folder: str, config: TrainConfig,
             device: str = "auto") -> dict[str, Any]:
    logger = get_run_logger()
    with model_slot():
        release_engines()  # training needs the memory more than a cached inference model does
        info = finetune_lib(model, Path(set_folder), Path(adapter_folder), config, device)
    m = info["metrics"]
    logger.info("%s: %s steps, train loss %.4f, %.2fs/step -> %s", set_name, m["steps"], m["train_loss"],
                m["seconds_per_step"] or 0, info["folder"])
    return _summary(info)


def finetune_options(model: str, set_folder: Path, adapter_folder: Path, config: TrainConfig) -> dict[str, Any]:
    # The set's key is known only once it is built: computed when the task is submitted after it.
    return cached_on(finetune_key(model, set_folder, config), adapter_folder)


@task(name="evaluate", task_run_name="evaluate {label} {task_name} {language}", retries=1, retry_delay_seconds=30,
      persist_result=True, result_serializer="json")
def evaluate(task_name: str, language: str, engine: EngineConfig, config: EvalConfig, data_dir: str,
             out_folder: str, label: str) -> dict[str, Any]:
    with model_slot():
        release_engines(keep=engine.model_copy(update={"batch_size": config.batch_size}))
        info = evaluate_lib(task_name, language, engine, config, Path(data_dir), Path(out_folder), label)
    t = info["throughput"]
    get_run_logger().info("%s %s %s: %s (%s items/s, %s tokens/s)", label, task_name, language, info["scores"],
                          t["items_per_s"], t["tokens_per_s"])
    return _summary(info)


def evaluate_options(task_name: str, language: str, engine: EngineConfig, config: EvalConfig, data_dir: Path,
                     out_folder: Path) -> dict[str, Any]:
    return cached_on(evaluate_key(task_name, language, engine, config, data_dir), out_folder)


@task(name="translate-test", task_run_name="translate-test {task_name} {language}", retries=1,
      retry_delay_seconds=30, persist_result=True, result_serializer="json")
def translate_test(task_name: str, language: str, translator: EngineConfig, answerer: EngineConfig,
                   config: EvalConfig, generation: GenerationParams, prompt: PromptConfig, data_dir: str,
                   out_folder: str) -> dict[str, Any]:
    with model_slot():
        release_engines()
        info = translate_test_lib(task_name, language, translator, answerer, config, generation, prompt,
                                  Path(data_dir), Path(out_folder))
    get_run_logger().info("translate-test %s %s: %s", task_name, language, info["scores"])
    return _summary(info)


def translate_test_options(task_name: str, language: str, translator: EngineConfig, answerer: EngineConfig,
                           config: EvalConfig, generation: GenerationParams, prompt: PromptConfig, data_dir: Path,
                           out_folder: Path) -> dict[str, Any]:
    key = translate_test_key(task_name, language, translator, answerer, config, generation, prompt, data_dir)
    marker = out_folder / stages.MARKER
    done = marker.is_file() and json.loads(marker.read_text()).get("run_key") == key
    return {"cache_key_fn": lambda *_: key, "refresh_cache": not (done and stages.read_done(
        out_folder, json.loads(marker.read_text())["key"]))}


@task(name="translation-quality", task_run_name="quality {task_name} en-{language}", retries=1,
      retry_delay_seconds=30, persist_result=True, result_serializer="json")
def quality(task_name: str, language: str, engine: EngineConfig, generation: GenerationParams,
            prompt: PromptConfig, data_dir: str, out_folder: str, limit: int | None) -> dict[str, Any]:
    with model_slot():
        info = translation_quality(task_name, language, engine, generation, prompt, Path(data_dir),
                                   Path(out_folder), limit)
    get_run_logger().info("translation quality %s en->%s: %s", task_name, language, info["scores"])
    return _summary(info)


def quality_options(task_name: str, language: str, engine: EngineConfig, generation: GenerationParams,
                    prompt: PromptConfig, data_dir: Path, out_folder: Path, limit: int | None) -> dict[str, Any]:
    return cached_on(quality_key(task_name, language, engine, generation, prompt, data_dir, limit), out_folder)


@task(name="report", retries=1, retry_delay_seconds=5)
def report(root: str, evaluations: list[dict[str, Any]], quality_results: list[dict[str, Any]],
           config: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out = write_report(Path(root), evaluations, quality_results, config, notes)
    return {k: v for k, v in out.items() if k != "table"} | {"table": out["table"].to_dict(orient="records")}
