"""The end-to-end flow on the CPU with the real model and real data, under a real Prefect test server."""

import json

import pandas as pd
import pytest

from stt.config import BuildConfig, ControlsConfig, EvalConfig, GenerationParams, RunConfig, TrainConfig
from stt.engine_settings import LlamaCppSettings
from stt_app.flows.self_translate_train import self_translate_train

from .conftest import DATA

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]  # the first test runs the whole flow


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return RunConfig(
        name="tiny", run_dir=tmp_path_factory.mktemp("stt") / "run", tasks=("gsm8k",), languages=("de",), limit=3,
        shard_size=3, engine=LlamaCppSettings(batch_size=4),
        generation=GenerationParams(max_new_tokens_cap=40),
        build=BuildConfig(sets=("english", "self-translate-train")),
        # One epoch at batch size 1: each adapter takes as many steps as its set has rows, so the Self-Translate-
        # Train adapter (English + accepted translations) takes more than the English one.
        train=TrainConfig(rank=4, alpha=8, epochs=1, batch_size=1, max_length=96, save_steps=2),
        eval=EvalConfig(limit=2, batch_size=2, max_new_tokens={"gsm8k": 8}, quality_limit=2, bootstrap_resamples=500),
        controls=ControlsConfig(equal_steps=True, translate_test=True),
    )


RUNS: list[str] = []  # the self-translate-train flow runs this file made (counted where they are made)


@pytest.fixture(scope="module")
def first(prefect_server, config):
    RUNS.append("first")
    return self_translate_train(config)


def test_every_artifact_exists(first, config):
    root = config.root
    for name in ("report.md", "results.parquet", "plot.png", "config.json"):
        assert (root / name).is_file(), name
    assert (root / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| gsm8k" in (root / "report.md").read_text()
    assert json.loads((root / "config.json").read_text())["train"]["batch_size"] == 1
    sets = {p.name: json.loads((p / "_manifest.json").read_text()) for p in (root / "gsm8k" / "sets").iterdir()}
    assert sets["english"]["rows"] == 3 and sets["english"]["mixing"] == {"english": 3}
    accepted = len(pd.read_parquet(root / "gsm8k" / "translate"))
    assert sets["self-translate-train-de"]["mixing"] == {"english": 3, "translated": accepted}


def test_adapters_load_with_peft_and_record_their_loss_curve(first, config):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stt.models import hf_folder, resolve_model

    accepted = len(pd.read_parquet(config.root / "gsm8k" / "translate"))
    for name, rows in (("english", 3), ("self-translate-train-de", 3 + accepted)):
        folder = config.root / "gsm8k" / "adapters" / name
        curve = pd.read_csv(folder / "loss.csv")
        assert list(curve["step"]) == list(range(1, rows + 1)) and (curve["loss"] > 0).all()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["steps"] == rows and metrics["seconds_per_step"] > 0
    base = AutoModelForCausalLM.from_pretrained(hf_folder(resolve_model("gemma3-270m")))
    model = PeftModel.from_pretrained(base, config.root / "gsm8k" / "adapters" / "english")
    assert model.active_adapter == "default"


def test_scores_are_computed_from_the_saved_predictions(first, config):
    results = pd.read_parquet(config.root / "results.parquet")
    assert set(results["language"]) == {"en", "de"}
    checked = 0
    for _, row in results.iterrows():
        for column in ("base", "zero_shot", "zero_shot_steps", "stt", "translate_test"):
            path = row.get(f"{column}_predictions")
            if isinstance(path, str):
                preds = pd.read_parquet(path)
                assert len(preds) == row["n"] == 2
                # Independent of the metric code: the parsed number equals the MGSM gold string.
                assert row[column] == pytest.approx(100 * (preds["prediction"] == preds["gold"]).mean())
                checked += 1
    assert checked == 7  # base + zero-shot in en and de; equal steps, STT, translate-test in de
    de = results.set_index("language").loc["de"]
    stt = pd.read_parquet(de["stt_predictions"]).set_index("index")["score"]
    zs = pd.read_parquet(de["zero_shot_predictions"]).set_index("index")["score"]
    assert de["gain"] == pytest.approx(100 * (stt - zs.loc[stt.index]).mean())
    assert de["gain_lo"] <= de["gain"] <= de["gain_hi"] and 0 < de["gain_p"] <= 1
    assert {r["language"] for r in first["table"]} == {"en", "de"}
    adapters = config.root / "gsm8k" / "adapters"
    steps = json.loads((adapters / "english-steps-de" / "metrics.json").read_text())
    stt_steps = json.loads((adapters / "self-translate-train-de" / "metrics.json").read_text())
    english = json.loads((adapters / "english" / "metrics.json").read_text())
    accepted = len(pd.read_parquet(config.root / "gsm8k" / "translate"))
    assert accepted >= 1  # else both sets are the same size and the check below could not tell them apart
    # The control trains on English only for as many steps as Self-Translate-Train took, not as English did.
    assert steps["steps"] == stt_steps["steps"] == 3 + accepted != english["steps"] == 3
    inputs = pd.read_parquet(config.root / "gsm8k" / "eval" / "translate-test-de" / "inputs_en.parquet")
    mgsm_de = (DATA / "mgsm" / "mgsm_de.tsv").read_text().splitlines()
    assert list(inputs["source"]) == [line.split("\t")[0].strip() for line in mgsm_de[:2]]


def test_artifacts_are_published(first):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        for key, kind in (("stt-results", "table"), ("stt-report", "markdown")):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert found and found[0].type == kind
    assert "data:image/png;base64," in found[0].data


@pytest.mark.full  # default tier: the key table (test_stage_key_table) proves which keys an eval setting changes
def test_changing_only_evaluation_reruns_only_evaluation(first, config):
    adapters = config.root / "gsm8k" / "adapters"
    before = {p: (p / "_manifest.json").read_text() for p in adapters.iterdir()}
    quality_before = (config.root / "gsm8k" / "quality" / "de" / "_manifest.json").read_text()
    changed = config.model_copy(update={"eval": config.eval.model_copy(update={"max_new_tokens": {"gsm8k": 4}})})
    RUNS.append("evaluation changed")
    again = self_translate_train(changed)
    assert {p: (p / "_manifest.json").read_text() for p in adapters.iterdir()} == before
    assert (config.root / "gsm8k" / "quality" / "de" / "_manifest.json").read_text() == quality_before
    preds = pd.read_parquet(config.root / "gsm8k" / "eval" / "zero-shot-de" / "predictions.parquet")
    assert (preds["completion_tokens"] <= 4).all()  # the evaluations did rerun, with the new setting
    assert again["timings"]["finetune"] < first["timings"]["finetune"]
    assert again["timings"]["translate-stage"] < first["timings"]["translate-stage"]


def test_the_flow_ran_exactly_the_jobs_of_the_plan(first, config):
    """One plan, several runners: the Prefect flow's task runs are the plan's jobs (stt.jobs), the same list
    `stt run --no-prefect` works through, each one run and none added."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from stt.jobs import STAGES, stage_jobs

    planned = {f"{j.stage} {j.task} {j.name}" for stage in STAGES for j in stage_jobs(config, stage)}
    # By hand: 1 shard, quality in de, 2 sets, 3 adapters (one the equal-steps control), 8 evaluations (base
    # and zero-shot in en and de; equal steps and STT in de; equal steps and STT on English), translate-test in de.
    assert len(planned) == 1 + 1 + 2 + 3 + 8 + 1
    assert {j for j in planned if j.startswith("translate-test ")} == {"translate-test gsm8k translate-test-de"}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(
            like_=" gsm8k ")), limit=200)
    ran = {r.name for r in runs if r.name.split(" ", 1)[0] in STAGES}
    assert ran == planned
    assert all(r.state and r.state.is_completed() for r in runs if r.name in planned)


def test_the_log_says_once_per_stage_how_timeouts_end_instead_of_a_warning_per_task(first):
    """Prefect warns on every task run with a timeout in a worker thread; the stage flows drop that warning
    and say once which way a model job's timeout ends (stt_app/tasks/logs.py)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        # This file's flow runs (the run and its stage flows all take the config named "tiny"); the full tier
        # runs it twice (the evaluation-only change).
        ours = [r for r in client.read_flow_runs(limit=200) if (r.parameters.get("config") or {}).get("name") == "tiny"]
        runs = sum(client.read_flow(r.flow_id).name == "self-translate-train" for r in ours)
        where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in ours]))
        logs: list = []
        while page := client.read_logs(where, limit=200, offset=len(logs)):
            logs += page
    assert runs == len(RUNS) and logs
    assert not [log.message for log in logs if "Timeouts in worker threads" in log.message]
    notes = [log for log in logs if log.message.startswith("timeouts: ")]
    # The stages that run model jobs with a timeout: translate, quality, fine-tune, evaluate, translate-test; the
    # first two in one flow run (translate-stage), the last two in another (evaluate-stage), fine-tune in its own.
    assert len(notes) == 5 * runs and len({log.flow_run_id for log in notes}) == 3 * runs
