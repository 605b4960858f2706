"""The method's stages as flows of their own, so each can be a deployment on the right work pool.

    translate-stage  (gpu) -> event stt.translate.completed   (translation, then translation quality)
    build-sets       (cpu) -> event stt.sets.built
    finetune         (gpu) -> event stt.finetune.completed
    evaluate-stage   (gpu) -> event stt.evaluate.completed
    report           (cpu) -> event stt.report.written

Each takes the run's `RunConfig` and announces its completion with an event that carries the config
and where its outputs are; deployment triggers (deployments/prefect.yaml) chain them. Called from
the end-to-end flow (as subflows) they announce nothing, so a full run never starts a chain.

Every stage runs the jobs of one plan (`stt.jobs`), the same jobs `stt run --no-prefect` runs: as tasks of
the stage's flow run (default), or spread over the gpu pool's workers (`scale_out.mode: deployments`,
see stt_app/flows/fanout.py).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event

from stt import jobs, pipeline
from stt.config import RunConfig
from stt.runlock import run_lock
from stt.stages import REGISTRY
from stt.stages.translate import summarize
from stt_app.flows import fanout
from stt_app.flows.run_jobs import run_here
from stt_app.tasks.report import report_task
from stt_app.tasks.store_blocks import use_store_credentials


def _announce(event: str, config: RunConfig, **payload: Any) -> None:
    """Emit the stage's completion event, unless this flow runs inside another flow."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.parent_task_run_id is not None:
        return
    emit_event(event=event, resource={"prefect.resource.id": f"stt.run.{config.name}",
                                      "prefect.resource.name": config.name},
               payload={"config": json.loads(config.model_dump_json()), **payload})
    get_run_logger().info("announced %s for run %s", event, config.name)


def _stages_of(flow_name: str) -> tuple[jobs.Stage, ...]:
    """The stages a stage flow runs (StageDef.flow), in the registry's order."""
    return tuple(name for name, stage in REGISTRY.items() if stage.flow == flow_name)


def run_stages(config: RunConfig, names: tuple[jobs.Stage, ...]) -> dict[str, list[dict[str, Any]]]:
    """Run the plan's jobs of these stages: as tasks of this flow run, or (scale_out.mode = deployments)
    as flow runs of the run-jobs deployment spread over the gpu pool's workers. The same jobs either way."""
    out: dict[str, list[dict[str, Any]]] = {}
    use_store_credentials(config.store_credentials)
    for stage, planned in jobs.plan_run(config, names).items():
        if config.scale_out.mode == "deployments" and stage in jobs.MODEL_STAGES:
            out[stage] = fanout.run_on_workers(config, stage, planned)
        else:
            out[stage] = run_here(planned, config.engine)
    return out


@flow(name="translate-stage", log_prints=True, persist_result=True, result_serializer="json")
def translate_stage(config: RunConfig = RunConfig(), announce: bool = True) -> dict[str, Any]:  # noqa: B008
    """Self-translate every task's English training data (one job per shard), then score the model's
    translations of human-translated test items (translation quality). `announce=False` (the fan-out
    deployment): the stage alone, without starting the chained stages."""
    dirs = {task: pipeline.plan_task(config, task).translate_dir for task in config.tasks}
    with ExitStack() as locks:
        for folder in dirs.values():  # a second run on the same folders fails (or waits) instead of racing
            locks.enter_context(run_lock(folder))
        run_stages(config, _stages_of("translate-stage"))
    for task, folder in dirs.items():
        create_table_artifact(key="translate-summary", table=summarize(folder),
                              description=f"Self-translation of {task} -> {folder}")
    out = {task: str(folder) for task, folder in dirs.items()}
    if announce:
        _announce("stt.translate.completed", config, translate_dirs=out)
    return {"translate_dirs": out}


@flow(name="build-sets", log_prints=True, persist_result=True, result_serializer="json")
def build_sets(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Build the english / self-translate-train / code-switch training sets from the translations."""
    built = [b for done in run_stages(config, _stages_of("build-sets")).values() for b in done]
    _announce("stt.sets.built", config, sets=[b["folder"] for b in built])
    return {"sets": built}


@flow(name="finetune", log_prints=True, persist_result=True, result_serializer="json")
def finetune(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Train one LoRA adapter per training set (the sets must be built)."""
    adapters = [a for done in run_stages(config, _stages_of("finetune")).values() for a in done]
    _announce("stt.finetune.completed", config, adapters=[a["folder"] for a in adapters])
    return {"adapters": adapters}


@flow(name="evaluate-stage", log_prints=True, persist_result=True, result_serializer="json")
def evaluate_stage(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008
    """Every model of the plan on every test language."""
    evaluations = [e for done in run_stages(config, _stages_of("evaluate-stage")).values()
                   for e in done]
    _announce("stt.evaluate.completed", config, evaluations=[e["folder"] for e in evaluations])
    return {"evaluations": evaluations}


@flow(name="report", log_prints=True, persist_result=True, result_serializer="json")
def report(config: RunConfig = RunConfig(), timings: dict[str, float] | None = None) -> dict[str, Any]:  # noqa: B008
    """Collect the evaluations from the run directory; write and publish the comparison."""
    out = report_task(config)
    create_table_artifact(key="stt-results", table=out["table"],
                          description=f"Self-Translate-Train vs zero-shot transfer ({config.name})")
    md = out["markdown"] + (_timings_md(timings) if timings else "")
    md += f"\n\nPlot file: `{Path(out['plot']).resolve()}`\n"
    create_markdown_artifact(key="stt-report", markdown=_embed_plot(md, Path(out["plot"])),
                             description=f"report of {config.name}")
    get_run_logger().info("report: %s", out["report"])
    _announce("stt.report.written", config, report=out["report"], results=out["results"], plot=out["plot"])
    return {"run_dir": str(config.root), **{k: out[k] for k in ("report", "results", "plot", "table")}}


# The stage flows by name (StageDef.flow), in the order of their stages in stt.stages.REGISTRY.
FLOWS = {f.name: f for f in (translate_stage, build_sets, finetune, evaluate_stage)}
ORDER = tuple(dict.fromkeys(stage.flow for stage in REGISTRY.values()))


def _timings_md(timings: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items())
    return f"\n\n## Stage times (this run; cached stages are fast)\n\n| stage | seconds |\n|---|---|\n{rows}"


def _embed_plot(markdown: str, png: Path) -> str:
    """The UI shows markdown artifacts, not files: inline the PNG as a data URI."""
    import base64

    data = base64.b64encode(png.read_bytes()).decode()
    return markdown.replace("![results](plot.png)", f"![results](data:image/png;base64,{data})")
