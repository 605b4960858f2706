"""Evaluate a model (optionally with a LoRA adapter) on one task's test set in one language.

Writes `predictions.parquet` (one row per test item: prompt, output, parsed prediction, gold,
per-item score) and `_manifest.json` (scores, config, model, adapter, data hash). The scores are
computed from the saved predictions by `score_predictions`, so anyone can recompute them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from stt import shards, stages
from stt.config import EngineConfig, EvalConfig
from stt.engines import Request, get_engine
from stt.errors import ConfigError
from stt.metrics import best_over_golds, extract_final_number, math_correct, squad_exact_match, squad_f1
from stt.models import file_sha256, resolve_model
from stt.templates import NLI_LABELS, TEMPLATE_VERSION, math_prompt, nli_prompt, qa_prompt
from stt.testsets import TEST_SETS, load_test_set

log = logging.getLogger(__name__)

METRICS = {"gsm8k": "accuracy", "squad": "f1", "mnli": "accuracy"}
# Base models run on past the answer into a new "Question:"; fine-tuned ones stop at EOS.
MATH_STOPS = ("\nQuestion:", "\n\n")


def adapter_fingerprint(adapter: Path | None) -> str | None:
    if adapter is None:
        return None
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"adapter folder {adapter} has no adapter_model.safetensors (a peft LoRA adapter)")
    return file_sha256(weights)


def evaluate_key(task: str, language: str, engine_config: EngineConfig, config: EvalConfig, data_dir: Path) -> str:
    """What the predictions depend on: weights, adapter, test items, template, evaluation settings."""
    items = load_test_set(task, data_dir, language, config.limit, config.xnli_split)
    return _key(task, language, resolve_model(engine_config.model).weights_sha256,
                adapter_fingerprint(engine_config.adapter), stages.stage_key(items=items), config)


def _key(task: str, language: str, weights: str, adapter_sha: str | None, data_sha: str, config: EvalConfig) -> str:
    # Batch size changes speed, not what is scored; the rest changes the predictions.
    settings = config.model_dump(mode="json", exclude={"batch_size", "include_english", "quality_limit"})
    return stages.stage_key(stage="evaluate", task=task, language=language, weights=weights, adapter=adapter_sha,
                            data=data_sha, template=TEMPLATE_VERSION, config=settings)


def _rows_math(engine: Any, items: list[dict], config: EvalConfig) -> list[dict[str, Any]]:
    prompts = [math_prompt(it["question"]) for it in items]
    outs = engine.generate([Request(p, config.max_new_tokens_math, MATH_STOPS) for p in prompts])
    return [{"prompt": p, "output": o.text, "prediction": extract_final_number(o.text) or "", "gold": it["answer"],
             "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}
            for it, p, o in zip(items, prompts, outs, strict=True)]


def _rows_qa(engine: Any, items: list[dict], config: EvalConfig) -> list[dict[str, Any]]:
    prompts = [qa_prompt(it["context"], it["question"]) for it in items]
    outs = engine.generate([Request(p, config.max_new_tokens_qa, ("\n",)) for p in prompts])
    return [{"prompt": p, "output": o.text, "prediction": o.text.strip(), "gold": json.dumps(it["answers"],
             ensure_ascii=False), "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}
            for it, p, o in zip(items, prompts, outs, strict=True)]


def _rows_nli(engine: Any, items: list[dict], config: EvalConfig) -> list[dict[str, Any]]:
    prompts = [nli_prompt(it["premise"], it["hypothesis"]) for it in items]
    pairs = [(p, f" {label}") for p in prompts for label in NLI_LABELS]
    scores = engine.loglikelihood(pairs)
    rows = []
    for k, (it, p) in enumerate(zip(items, prompts, strict=True)):
        lp = [s.logprob for s in scores[3 * k : 3 * k + 3]]
        pred = NLI_LABELS[max(range(3), key=lambda j: lp[j])]
        rows.append({"prompt": p, "output": json.dumps(dict(zip(NLI_LABELS, lp, strict=True))), "prediction": pred,
                     "gold": it["label"], "prompt_tokens": 0, "completion_tokens": 0})
    return rows


def score_row(task: str, language: str, row: dict[str, Any]) -> float:
    """Per-item score from a saved prediction row (math/NLI: 0/1; QA: F1)."""
    if task == "gsm8k":
        return float(math_correct(row["output"], row["gold"]))
    if task == "squad":
        return best_over_golds(squad_f1, row["prediction"], json.loads(row["gold"]), language)
    return float(row["prediction"] == row["gold"])


def score_predictions(task: str, language: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The scores of a predictions file, recomputed from its rows."""
    n = len(rows)
    if task == "squad":
        em = [best_over_golds(squad_exact_match, r["prediction"], json.loads(r["gold"]), language) for r in rows]
        f1 = [score_row(task, language, r) for r in rows]
        return {"f1": 100 * sum(f1) / n, "exact_match": 100 * sum(em) / n, "n": n}
    acc = [score_row(task, language, r) for r in rows]
    out = {"accuracy": 100 * sum(acc) / n, "n": n}
    if task == "gsm8k":
        out["answered"] = 100 * sum(bool(r["prediction"]) for r in rows) / n  # a number was found at all
    return out


PRED_SCHEMA = pa.schema([
    ("id", pa.string()), ("index", pa.int64()), ("task", pa.string()), ("language", pa.string()),
    ("model", pa.string()), ("prompt", pa.string()), ("output", pa.string()), ("prediction", pa.string()),
    ("gold", pa.string()), ("score", pa.float64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
])


def evaluate(task: str, language: str, engine_config: EngineConfig, config: EvalConfig, data_dir: Path,
             out_folder: Path, label: str = "base") -> dict[str, Any]:
    """Evaluate (or reuse) one (model, adapter, task, language); returns the manifest with the scores."""
    if task not in TEST_SETS:
        raise ConfigError(f"no test set for task '{task}': choose from {', '.join(TEST_SETS)}")
    items = load_test_set(task, data_dir, language, config.limit, config.xnli_split)
    model = resolve_model(engine_config.model)
    adapter_sha = adapter_fingerprint(engine_config.adapter)
    data_sha = stages.stage_key(items=items)
    key = _key(task, language, model.weights_sha256, adapter_sha, data_sha, config)
    out_folder = Path(out_folder)
    done = stages.read_done(out_folder, key)
    if done:
        return {**done, "folder": str(out_folder), "reused": True}
    stages.clear(out_folder)
    engine = get_engine(engine_config.model_copy(update={"batch_size": config.batch_size}))
    t0 = time.perf_counter()
    rows = {"gsm8k": _rows_math, "squad": _rows_qa, "mnli": _rows_nli}[task](engine, items, config)
    seconds = time.perf_counter() - t0
    full = []
    for it, r in zip(items, rows, strict=True):
        row = {"id": it["id"], "index": it["index"], "task": task, "language": language, "model": label, **r}
        row["score"] = score_row(task, language, row)
        full.append(row)
    shards.write_parquet_atomic(pa.Table.from_pylist(full, schema=PRED_SCHEMA), out_folder / "predictions.parquet",
                                {"stt.key": key})
    scores = score_predictions(task, language, full)
    tokens = sum(r["completion_tokens"] for r in full)
    throughput = {"seconds": round(seconds, 2), "items_per_s": round(len(full) / seconds, 3) if seconds else None,
                  "tokens_per_s": round(tokens / seconds, 2) if seconds and tokens else None}
    log.info("%s %s %s: %s (%d items, %.1fs)", label, task, language, scores, len(full), seconds)
    info = stages.mark_done(out_folder, key, ["predictions.parquet"], stage="evaluate", task=task,
                            language=language, model=label, metric=METRICS[task], scores=scores,
                            throughput=throughput, model_id=model.model_id, weights_sha256=model.weights_sha256,
                            adapter=str(engine_config.adapter) if engine_config.adapter else None,
                            adapter_sha256=adapter_sha, data_sha256=data_sha, test_set=TEST_SETS[task],
                            template_version=TEMPLATE_VERSION, config=config.model_dump(mode="json"))
    return {**info, "folder": str(out_folder), "reused": False}
