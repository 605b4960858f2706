"""Translation quality: the model translates human-translated items; chrF and BLEU against the humans'."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stt import timeouts
from stt.config import EngineConfig, GenerationParams, PromptConfig, RunConfig, TimeoutConfig
from stt.specs import get_task
from stt.stages.base import Job, ModelOnItems, StageDef

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


class Inputs(ModelOnItems):
    generation: GenerationParams
    prompt: PromptConfig
    limit: int | None  # human-translated items scored


class Quality(StageDef[Inputs]):
    name = "quality"
    Inputs = Inputs
    flow = "translate-stage"

    def plan_jobs(self, config: RunConfig, plan: TaskPlan) -> list[Job]:
        if not get_task(plan.task).reference_field:  # no human translations to score against
            return []
        data_dir = config.resolved_data_dir()
        return [self.job(plan.task, lang, plan.quality_dir(lang),
                         Inputs(task=plan.task, language=lang, engine=config.engine, generation=config.generation,
                                prompt=config.prompt, data_dir=data_dir, limit=config.eval.quality_limit),
                         config.timeouts) for lang in config.languages]

    def key(self, i: Inputs) -> str:
        from stt.quality import quality_key

        return quality_key(i.task, i.language, i.engine, i.generation, i.prompt, i.data_dir, i.limit)

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:
        from stt.quality import translation_quality

        return translation_quality(i.task, i.language, i.engine, i.generation, i.prompt, i.data_dir, folder, i.limit)

    def brief(self, info: dict[str, Any]) -> str:
        return str(info.get("scores"))

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:
        return timeouts.evaluation_s(i.limit or 250, i.generation.max_new_tokens_cap, timeouts_)

    def engine_kept(self, i: Inputs) -> EngineConfig | None:
        return i.engine


STAGE = Quality()
