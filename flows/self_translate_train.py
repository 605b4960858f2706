"""The end-to-end flow: translate -> build sets -> fine-tune -> evaluate -> report.

Zero-shot transfer (LoRA on English only) vs Self-Translate-Train (LoRA on English + the model's
own translations), per language, published as Prefect artifacts and written to the run directory.
Stages run one after another: they all hold the one model this machine has room for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.translate import translate
from stt import pipeline
from stt.config import RunConfig
from tasks import pipeline as t


@flow(name="self-translate-train", log_prints=True)
def self_translate_train(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Run the whole method for every task of the config; returns the report's locations and table."""
    logger = get_run_logger()
    data_dir = config.resolved_data_dir()
    timings: dict[str, float] = {}
    evaluations, quality = [], []
    for task in config.tasks:
        plan = pipeline.plan_task(config, task)
        t0 = time.perf_counter()
        translate(config.translate_config(task))
        timings[f"{task}: translate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for lang in config.languages:
            args = (task, lang, config.engine, config.generation, config.prompt, data_dir, plan.quality_dir(lang),
                    config.eval.quality_limit)
            quality.append(t.quality.with_options(**t.quality_options(*args))(*map(_plain, args)))
        timings[f"{task}: translation quality"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for s in plan.sets:
            opts = t.build_dataset_options(task, s.kind, s.language, plan.translate_dir, plan.set_dir(s.name),
                                           config.build)
            t.build_dataset.with_options(**opts)(task, s.kind, s.language, str(plan.translate_dir),
                                                 str(plan.root / "sets"), config.build)
            opts = t.finetune_options(config.engine.model, plan.set_dir(s.name), plan.adapter_dir(s.name),
                                      config.train)
            t.finetune.with_options(**opts)(config.engine.model, s.name, str(plan.set_dir(s.name)),
                                            str(plan.adapter_dir(s.name)), config.train, config.engine.device)
        timings[f"{task}: build + fine-tune"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for job in plan.evals:
            engine = pipeline.eval_engine(config, plan, job)
            opts = t.evaluate_options(task, job.language, engine, config.eval, data_dir, plan.eval_dir(job))
            evaluations.append(t.evaluate.with_options(**opts)(task, job.language, engine, config.eval, str(data_dir),
                                                               str(plan.eval_dir(job)), job.model))
        timings[f"{task}: evaluate"] = time.perf_counter() - t0

    config_json = json.loads(config.model_dump_json())
    out = t.report(str(config.root), evaluations, quality, config_json, pipeline.notes(config))
    create_table_artifact(key="stt-results", table=out["table"],
                          description=f"Self-Translate-Train vs zero-shot transfer ({config.name})")
    md = out["markdown"] + _timings_md(timings) + f"\n\nPlot file: `{Path(out['plot']).resolve()}`\n"
    create_markdown_artifact(key="stt-report", markdown=_embed_plot(md, Path(out["plot"])),
                             description=f"report of {config.name}")
    for name, seconds in timings.items():
        logger.info("%s: %.1fs", name, seconds)
    logger.info("report: %s", out["report"])
    return {"run_dir": str(config.root), **{k: out[k] for k in ("report", "results", "plot", "table")},
            "timings": {k: round(v, 1) for k, v in timings.items()}}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _timings_md(timings: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    return f"\n\n## Stage times (this run; cached stages are fast)\n\n| stage | seconds |\n|---|---|\n{rows}"


def _embed_plot(markdown: str, png: Path) -> str:
    """The UI shows markdown artifacts, not files: inline the PNG as a data URI."""
    import base64

    data = base64.b64encode(png.read_bytes()).decode()
    return markdown.replace("![results](plot.png)", f"![results](data:image/png;base64,{data})")
