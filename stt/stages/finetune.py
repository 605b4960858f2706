"""Fine-tune: one LoRA adapter per training set and seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stt import markers, pipeline, timeouts
from stt.config import RunConfig
from stt.stages.base import Job, StageDef, find


class Finetune(StageDef):
    name = "finetune"
    flow = "finetune"

    def jobs(self, config: RunConfig, task: str, plan: pipeline.TaskPlan) -> list[Job]:
        # An adapter trained for as many steps as another one waits for it (wave 1).
        return [Job(stage=self.name, task=task, name=a.name, wave=1 if a.steps_like else 0) for a in plan.adapters]

    def folder(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> Path:
        return plan.adapter_dir(job.name)

    def key(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> str:
        from stt.finetune import finetune_key

        a = find(plan.adapters, job, "adapter")
        return finetune_key(config.engine.model, plan.set_dir(a.set_name),
                            pipeline.adapter_train_config(config, plan, a))

    def run(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> dict[str, Any]:
        from stt.engines import give_memory_back
        from stt.finetune import finetune

        a = find(plan.adapters, job, "adapter")
        try:
            # Another adapter of the task done under the same key is copied, not trained again.
            twins = [plan.adapter_dir(b.name) for b in plan.adapters if b.name != a.name]
            # engine.process child: the training runs in the engine process, ended at the job's deadline.
            return finetune(config.engine.model, plan.set_dir(a.set_name), plan.adapter_dir(a.name),
                            pipeline.adapter_train_config(config, plan, a), config.engine.device, twins=twins,
                            supervised=config.engine.process == "child")
        finally:
            give_memory_back()  # the model, its activations and the optimizer: 2 GB a later job never reuses

    def brief(self, info: dict[str, Any]) -> str:
        m = info.get("metrics", {})
        loss = m.get("train_loss")
        copied = f" (copied from {Path(info['copied_from']).name}: the same key)" if info.get("copied_from") else ""
        return f"{m.get('steps')} steps, train loss " + (f"{loss:.4g}" if isinstance(loss, float) else str(loss)) \
            + copied

    def timeout_s(self, config: RunConfig, plan: pipeline.TaskPlan, job: Job) -> float | None:
        from stt.finetune import planned_steps

        a = find(plan.adapters, job, "adapter")
        marker = plan.set_dir(a.set_name) / markers.MARKER  # the set's rows give the adapter's steps
        rows = json.loads(marker.read_text()).get("rows", 0) if marker.is_file() else 0
        return timeouts.training_s(planned_steps(max(rows, 1), pipeline.adapter_train_config(config, plan, a)),
                                   config.timeouts)


STAGE = Finetune()
