"""Translate-test: the base model translates each test input into English (the translate stage's few-shot
prompt, reversed), then the English adapter answers (Etxaniz et al. 2023); one job per (language, seed). A
control of the evaluate stage's table (the `translate_test` column), run with the other evaluations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stt import markers, timeouts
from stt.config import EngineConfig, GenerationParams, PromptConfig, RunConfig, TimeoutConfig
from stt.errors import DataError
from stt.stages.base import Job
from stt.stages.evaluate import Evaluate, eval_engine
from stt.stages.evaluate import Inputs as EvaluateInputs

if TYPE_CHECKING:
    from stt.pipeline import TaskPlan


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
        from stt.translate_test import translate_test_key

        return translate_test_key(i.task, i.language, i.translator, i.engine, i.eval, i.generation, i.prompt,
                                  i.data_dir)

    def is_done(self, i: Inputs, folder: Path) -> bool:  # type: ignore[override]
        # The marker holds the key of its answers; the run key says which translated inputs made them.
        try:
            key = self.key(i)
        except DataError:  # an upstream output is missing: not done
            return False
        marker = folder / markers.MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        return info.get("run_key") == key and markers.read_done(folder, info["key"]) is not None

    def run(self, i: Inputs, folder: Path) -> dict[str, Any]:  # type: ignore[override]
        from stt.translate_test import translate_test

        return translate_test(i.task, i.language, i.translator, i.engine, i.eval, i.generation, i.prompt,
                              i.data_dir, folder)

    def timeout_s(self, i: Inputs, timeouts_: TimeoutConfig) -> float | None:  # type: ignore[override]
        return timeouts.evaluation_timeout_s(i.task, i.eval, timeouts_, i.data_dir, i.language,
                                             i.generation.max_new_tokens_cap)

    def engine_kept(self, i: Inputs) -> EngineConfig | None:  # type: ignore[override]
        return None  # two models per job: the translator, then the answerer


STAGE = TranslateTest()
