"""The method's stages as flows of their own, so each can be a deployment on the right work pool.

    translate-stage  (gpu) -> event stt.translate.completed
    build-sets       (cpu) -> event stt.sets.built
    finetune         (gpu) -> event stt.finetune.completed
    evaluate-stage   (gpu) -> event stt.evaluate.completed
    report           (cpu) -> event stt.report.written

Each takes the run's `RunConfig` and announces its completion with an event that carries the config
and where its outputs are; deployment triggers (deployments/prefect.yaml) chain them. Called from
the end-to-end flow (as subflows) they announce nothing, so a full run never starts a chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event

from flows.translate import translate
from stt import pipeline, stages, timeouts
from stt.config import RunConfig, TrainConfig
from stt.finetune import planned_steps
from stt.timeouts import task_options
from stt.trainsets import training_source
from tasks import pipeline as t


def _announce(event: str, config: RunConfig, **payload: Any) -> None:
    """Emit the stage's completion event, unless this flow runs inside another flow."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.parent_task_run_id is not None:
        return
    emit_event(event=event, resource={"prefect.resource.id": f"stt.run.{config.name}",
                                      "prefect.resource.name": config.name},
               payload={"config": json.loads(config.model_dump_json()), **payload})
    get_run_logger().info("announced %s for run %s", event, config.name)


@flow(name="translate-stage", log_prints=True, persist_result=True, result_serializer="json")
def translate_stage(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Self-translate every task's English training data (the translate flow per task)."""
    out = {task: translate(config.translate_config(task))["out_dir"] for task in config.tasks}
    _announce("stt.translate.completed", config, translate_dirs=out)
    return {"translate_dirs": out}


@flow(name="build-sets", log_prints=True, persist_result=True, result_serializer="json")
def build_sets(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Build the english / self-translate-train / code-switch training sets from the translations."""
    built: dict[str, list[dict[str, Any]]] = {}
    for task in config.tasks:
        plan = pipeline.plan_task(config, task)
        built[task] = []
        source = training_source(config.translate_config(task))
        for s in plan.sets:
            opts = t.build_dataset_options(task, s.kind, s.language, plan.translate_dir, plan.set_dir(s.name),
                                           config.build, source)
            built[task].append(t.build_dataset.with_options(**opts)(
                task, s.name, s.kind, s.language, str(plan.translate_dir), str(plan.root / "sets"), config.build,
                str(source) if source else None))
    _announce("stt.sets.built", config, sets={k: [b["folder"] for b in v] for k, v in built.items()})
    return {"sets": built}


@flow(name="finetune", log_prints=True, persist_result=True, result_serializer="json")
def finetune(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Train one LoRA adapter per training set (the sets must be built)."""
    adapters: dict[str, list[dict[str, Any]]] = {}
    for task in config.tasks:
        plan = pipeline.plan_task(config, task)
        adapters[task] = []
        for a in plan.adapters:
            # Submitted in plan order: an equal-steps adapter reads the step count of one trained before it.
            train = pipeline.adapter_train_config(config, plan, a)
            opts = t.finetune_options(config.engine.model, plan.set_dir(a.set_name), plan.adapter_dir(a.name), train)
            opts |= task_options(timeouts.training_s(_steps(plan.set_dir(a.set_name), train), config.timeouts),
                                 config.timeouts)
            adapters[task].append(t.finetune.with_options(**opts)(
                config.engine.model, a.name, str(plan.set_dir(a.set_name)), str(plan.adapter_dir(a.name)), train,
                config.engine.device))
    _announce("stt.finetune.completed", config, adapters={k: [a["folder"] for a in v] for k, v in adapters.items()})
    return {"adapters": adapters}


@flow(name="evaluate-stage", log_prints=True, persist_result=True, result_serializer="json")
def evaluate_stage(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Translation quality, then every model of the plan on every test language."""
    data_dir = config.resolved_data_dir()
    quality, evaluations = [], []
    for task in config.tasks:
        plan = pipeline.plan_task(config, task)
        for lang in config.languages:
            args = (task, lang, config.engine, config.generation, config.prompt, data_dir, plan.quality_dir(lang),
                    config.eval.quality_limit)
            limit = timeouts.evaluation_s(config.eval.quality_limit or 250, config.generation.max_new_tokens_cap,
                                          config.timeouts)
            quality.append(t.quality.with_options(**t.quality_options(*args), **task_options(limit, config.timeouts))(
                task, lang, config.engine, config.generation, config.prompt, str(data_dir),
                str(plan.quality_dir(lang)), config.eval.quality_limit))
        for job in plan.evals:
            engine = pipeline.eval_engine(config, plan, job)
            if job.translate_test:
                translator = pipeline.translator_engine(config)
                args = (task, job.language, translator, engine, config.eval, config.generation, config.prompt)
                opts = t.translate_test_options(*args, data_dir, plan.eval_dir(job))
                opts |= _eval_timeout(config, task, extra_tokens=config.generation.max_new_tokens_cap)
                evaluations.append(t.translate_test.with_options(**opts)(*args, str(data_dir),
                                                                         str(plan.eval_dir(job))))
                continue
            opts = t.evaluate_options(task, job.language, engine, config.eval, data_dir, plan.eval_dir(job))
            opts |= _eval_timeout(config, task)
            evaluations.append(t.evaluate.with_options(**opts)(
                task, job.language, engine, config.eval, str(data_dir), str(plan.eval_dir(job)), job.model))
    _announce("stt.evaluate.completed", config, evaluations=[e["folder"] for e in evaluations])
    return {"evaluations": evaluations, "quality": quality}


def _steps(set_folder: Path, train: TrainConfig) -> int:
    """Optimizer steps an adapter will take (from its set's manifest), for its timeout."""
    marker = Path(set_folder) / stages.MARKER
    rows = json.loads(marker.read_text()).get("rows", 0) if marker.is_file() else 0
    return planned_steps(max(rows, 1), train)


def _eval_timeout(config: RunConfig, task: str, extra_tokens: int = 0) -> dict[str, Any]:
    """A hung evaluation ends as a failed attempt that retries (a timeout from its size)."""
    return timeouts.evaluation_options(task, config.eval, config.timeouts, extra_tokens)


@flow(name="report", log_prints=True, persist_result=True, result_serializer="json")
def report(config: RunConfig = RunConfig(), timings: dict[str, float] | None = None) -> dict[str, Any]:  # noqa: B008
    """Collect the evaluations from the run directory; write and publish the comparison."""
    evaluations, quality = pipeline.collect(config)
    out = t.report(str(config.root), evaluations, quality, json.loads(config.model_dump_json()),
                   pipeline.notes(config))
    create_table_artifact(key="stt-results", table=out["table"],
                          description=f"Self-Translate-Train vs zero-shot transfer ({config.name})")
    md = out["markdown"] + (_timings_md(timings) if timings else "")
    md += f"\n\nPlot file: `{Path(out['plot']).resolve()}`\n"
    create_markdown_artifact(key="stt-report", markdown=_embed_plot(md, Path(out["plot"])),
                             description=f"report of {config.name}")
    get_run_logger().info("report: %s", out["report"])
    _announce("stt.report.written", config, report=out["report"], results=out["results"], plot=out["plot"])
    return {"run_dir": str(config.root), **{k: out[k] for k in ("report", "results", "plot", "table")}}


def _timings_md(timings: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    return f"\n\n## Stage times (this run; cached stages are fast)\n\n| stage | seconds |\n|---|---|\n{rows}"


def _embed_plot(markdown: str, png: Path) -> str:
    """The UI shows markdown artifacts, not files: inline the PNG as a data URI."""
    import base64

    data = base64.b64encode(png.read_bytes()).decode()
    return markdown.replace("![results](plot.png)", f"![results](data:image/png;base64,{data})")
