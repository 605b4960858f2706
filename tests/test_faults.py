"""Injected engine faults (STT_FAULTS) through the real Prefect translate flow on the real model:
transient faults are retried and survived, a permanent one fails only its shard (the others are kept and
not redone), a hung engine is ended by the task's timeout and retried, and the plain runner retries too."""

import json
import logging

import pytest

from stt import faults, jobs
from stt.config import EvalConfig, GenerationParams, TimeoutConfig, TranslateConfig, resolve_data_dir
from stt.engine_settings import LlamaCppSettings, TransformersSettings
from stt.engines import get_engine
from stt.jobs import ShardsFailed
from stt_app.flows.translate import translate

from .conftest import engine_gone

pytestmark = pytest.mark.model
DATA = resolve_data_dir()


def _config(out, languages=("de", "th"), limit=2, **timeouts):
    return TranslateConfig(task="gsm8k", languages=languages, limit=limit, shard_size=1, out_dir=out,
                           engine=LlamaCppSettings(batch_size=4),
                           generation=GenerationParams(max_new_tokens_cap=12),  # faults, not translations
                           timeouts=TimeoutConfig(**{"floor_s": 600, "retries": 1, "retry_delays_s": (0.5,),
                                                     **timeouts}))


@pytest.fixture(autouse=True)
def _fresh_counts():
    faults.reset()
    yield
    faults.reset()


@pytest.mark.full  # the default tier: the plain runner's retries and a failing shard (test_translate_flow.py)
def test_transient_faults_are_survived_and_a_permanent_one_fails_only_its_shard(prefect_server, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("STT_FAULTS", "transient=de-*:1,permanent=th-00001")
    with pytest.raises(ShardsFailed) as failed:
        translate(_config(out))
    assert list(failed.value.failed) == ["th-00001"] and "injected permanent fault" in str(failed.value)
    # Each German shard failed once and succeeded on its retry; the permanent one used up its retry.
    assert faults._CALLS == {"de-00000": 2, "de-00001": 2, "th-00000": 1, "th-00001": 2}
    kept = json.loads((out / "_manifest.json").read_text())["shards"]
    assert sorted(kept) == ["de-00000", "de-00001", "th-00000"]
    monkeypatch.delenv("STT_FAULTS")
    again = translate(_config(out))
    assert again["shards"] == {"de-00000": "complete", "de-00001": "complete", "th-00000": "complete",
                               "th-00001": "generated"}


@pytest.mark.full  # a fault trial of the full tier (test_child_engine.py keeps a hang ended at its deadline)
def test_a_hung_engine_is_ended_by_the_timeout_and_retried(prefect_server, tmp_path, monkeypatch, caplog, started):
    """The hang is in the engine's process (engine.process: child, the default): Prefect's timeout interrupts
    the task's wait, which kills that process; the retry gets a fresh one."""
    from stt.engines import Request
    from stt.engines import child as child_module

    child_module.stop_engine_process()
    out = tmp_path / "out"
    config = _config(out, languages=("de",), limit=1, floor_s=20, min_tokens_per_s=1e6)
    # Started and loaded beforehand: the first attempt reaches the hung call at once.
    get_engine(config.engine, config.generation).generate([Request("Hello", 2, ())])
    monkeypatch.setenv("STT_FAULTS", "hang=de-00000")
    # A model slot of its own with room for both attempts: the retry never waits on the slot the hung
    # attempt may still hold, so each attempt reaches the engine exactly once.
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    slot = f"stt-test-hang-{uuid4().hex[:8]}"
    monkeypatch.setenv("STT_MODEL_SLOT", slot)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=slot, limit=2))
    with caplog.at_level(logging.INFO), \
            pytest.raises(ShardsFailed, match=r"de-00000: Task run exceeded timeout of 20\.0 second"):
        translate(config)
    # The attempt hung and was ended; Prefect retried it, and the retry hung and was ended too.
    messages = [r.getMessage() for r in caplog.records]
    assert faults._CALLS == {"de-00000": 2}
    assert any("timed out after 20.0 second" in m and "Retry 1/1" in m for m in messages)
    assert any("timed out after 20.0 second" in m and "Retries are exhausted" in m for m in messages)
    # The first attempt hung in the engine process (its log line came back through the pipe, with its pid),
    # not here; that process and the retry's were killed.
    assert f"STT_FAULTS hang: de-00000 hangs here, in process {started[0]}" in messages
    assert len(started) == 2 and all(engine_gone(pid) for pid in started)
    monkeypatch.delenv("STT_FAULTS")
    # Timeouts are not part of any key: the rerun (with room for a slow machine) redoes the same shard.
    assert translate(config.model_copy(update={"timeouts": TimeoutConfig()}))["shards"] == {"de-00000": "generated"}


def test_the_plain_runner_retries_transient_faults(tmp_path, monkeypatch):
    monkeypatch.setenv("STT_FAULTS", "transient=*:2")
    out = jobs.translate(_config(tmp_path / "out", languages=("de",), limit=1))
    assert faults._CALLS == {"de-00000": 3}
    assert json.loads((out / "_manifest.json").read_text())["shards"]["de-00000"]["input_rows"] == 1


def test_evaluation_survives_a_transient_fault_and_a_permanent_one_keeps_the_finished_languages(
        prefect_server, tmp_path, monkeypatch):
    """The fault hook in evaluation, through the real evaluate flow: a transient fault is retried and the
    scores are those of an evaluation that never failed; a permanent one ends the run naming the fault,
    and the languages already evaluated are kept (not scored again on the rerun)."""
    import pandas as pd

    from stt.stages.evaluate import evaluate
    from stt_app.flows.evaluate import evaluate_model

    config, engine = EvalConfig(limit=6, batch_size=6), TransformersSettings(batch_size=6)
    limits = TimeoutConfig(retries=1, retry_delays_s=(0.5,))
    out = tmp_path / "eval"
    monkeypatch.setenv("STT_FAULTS", "transient=eval:base-en:1")
    first = evaluate_model("mnli", ["en", "de"], engine, config, out_dir=str(out), timeouts=limits)
    assert faults._CALLS == {"eval:base-en": 2, "eval:base-de": 1}  # en failed once, then succeeded
    monkeypatch.delenv("STT_FAULTS")
    clean = evaluate("mnli", "en", engine, config, DATA, tmp_path / "clean", "base")
    assert first[0]["scores"] == clean["scores"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "base-en" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "predictions.parquet"))

    faults.reset()
    monkeypatch.setenv("STT_FAULTS", "permanent=eval:base-th")
    with pytest.raises(Exception, match="injected permanent fault: loglikelihood in eval:base-th"):
        evaluate_model("mnli", ["en", "de", "th"], engine, config, out_dir=str(out), timeouts=limits)
    assert faults._CALLS == {"eval:base-th": 2}  # en and de were kept, not scored again; th tried twice
    assert sorted(p.parent.name for p in out.glob("*/_manifest.json")) == ["base-de", "base-en"]


def test_tasks_that_start_together_on_a_fresh_server_all_get_the_model_slot(prefect_server, monkeypatch):
    """A stage's tasks start at once; on a server that has no model slot yet, each finds none and creates
    it. None of them may fail for having lost that race (the demo's first run did, then retried 10 s later)."""
    import threading
    import uuid

    from prefect.client.orchestration import get_client

    from stt_app.tasks.model_slot import ensure_model_slot

    name = f"stt-model-race-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("STT_MODEL_SLOT", name)
    start, errors = threading.Barrier(8), []

    def task() -> None:
        start.wait()
        try:
            ensure_model_slot()
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=task) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1


def test_model_jobs_of_one_process_take_the_slot_one_after_another_without_idle_gaps(prefect_server, monkeypatch):
    """Queued at the server, a waiting job is told to retry in up to 30 s (its average occupancy times the
    jobs waiting), so the slot sat idle between jobs: 10-20 s per job in the demo's evaluation. Jobs of one
    process queue in the process and ask the server the moment the slot is free: each asks once and is never
    told to wait (counted at the client, not timed)."""
    import itertools
    import threading
    import time
    import uuid

    from prefect.client.orchestration._concurrency_limits.client import ConcurrencyLimitAsyncClient

    from stt_app.tasks.model_slot import model_slot

    asked: list[int] = []
    increment = ConcurrencyLimitAsyncClient.increment_concurrency_slots_with_lease

    async def counted(self, *args, **kwargs):
        try:
            response = await increment(self, *args, **kwargs)
        except Exception as exc:  # 423 Locked: "retry in N s", the idle gap this guards against
            asked.append(getattr(getattr(exc, "response", None), "status_code", -1))
            raise
        asked.append(response.status_code)
        return response

    monkeypatch.setattr(ConcurrencyLimitAsyncClient, "increment_concurrency_slots_with_lease", counted)
    monkeypatch.setenv("STT_MODEL_SLOT", f"stt-model-gaps-{uuid.uuid4().hex[:8]}")
    holds: list[tuple[float, float]] = []
    start = threading.Barrier(5)

    def job() -> None:
        start.wait()
        with model_slot():
            t0 = time.monotonic()
            time.sleep(0.5)
            holds.append((t0, time.monotonic()))

    threads = [threading.Thread(target=job) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holds.sort()
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(holds)), "two jobs held the slot at once"
    assert asked == [200] * 5, f"jobs were told to wait at the server: {asked}"
