"""Engines in supervised child processes (engine.process: child): the same outputs as in-process, one process
kept across engines that swaps their models and gives a released model's memory back, a call stuck in native
code ended at the job's deadline under the plain runner and under Prefect, the process gone with it, and the
next call served by a fresh process."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stt import faults
from stt.config import EvalConfig, RunConfig, TimeoutConfig
from stt.engine_settings import LlamaCppSettings, engine_config
from stt.engines import Request, get_engine, release_engines
from stt.engines import child as child_module
from stt.engines.child import ChildEngine, EngineHung, deadline, stop_engine_process

from .conftest import DATA
from .conftest import engine_gone as _gone

pytestmark = pytest.mark.model

REQUESTS = [Request("Question: What is 3 plus 3?\nAnswer:", 8, ("\n",)),
            Request("Die Hauptstadt von Frankreich ist", 8, ("\n",))]
PAIRS = [("Question: What is 3 plus 3?\nAnswer:", " 6"), ("Premise: A man walks.\nRelation:", " entailment")]


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


@pytest.fixture(autouse=True)
def _fresh():
    faults.reset()
    stop_engine_process()  # each test starts without one
    yield
    release_engines()


@pytest.mark.parametrize("kind", ["llama-cpp", pytest.param("transformers", marks=pytest.mark.full)])
def test_a_child_engine_gives_the_in_process_engines_outputs(kind):
    inline = get_engine(engine_config(kind=kind, batch_size=2, reuse_prefix_cache=False, process="inline"))
    child = get_engine(engine_config(kind=kind, batch_size=2, reuse_prefix_cache=False, process="child"))
    assert isinstance(child, ChildEngine) and child.pid is None  # started on the first call, not before
    assert [c.text for c in child.generate(REQUESTS)] == [c.text for c in inline.generate(REQUESTS)]
    pid = child.pid
    assert pid is not None and pid != os.getpid()
    assert [s.logprob for s in child.loglikelihood(PAIRS)] == [s.logprob for s in inline.loglikelihood(PAIRS)]
    assert child.pid == pid  # one loaded model serves every call
    # Calls from several threads at once (Prefect runs tasks in threads) each get their own answer.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda r: child.generate([r])[0].text, REQUESTS * 3))
    assert answers == [inline.generate([r])[0].text for r in REQUESTS * 3]
    assert child.stats.calls == 8 and child.count_tokens("Hallo Welt") == inline.count_tokens("Hallo Welt")
    loaded_mb = _rss_mb(pid)
    release_engines()
    # Released: the model is gone from the process, and its memory back with the system (the GGUF file's
    # pages, 250 MB; transformers' fp32 weights, 1 GB); the process stays for the next model.
    assert child.pid is None and not _gone(pid)
    assert _rss_mb(pid) < loaded_mb - 150, (loaded_mb, _rss_mb(pid))


def test_engines_of_other_configs_swap_their_models_in_one_process(started):
    """Jobs that follow each other (a base model, then an adapter, then another config) reuse the process:
    starting one costs 8-10 s on the CPU, loading a GGUF model in it about 1 s."""
    first = get_engine(LlamaCppSettings(batch_size=2, process="child"))
    second = get_engine(LlamaCppSettings(batch_size=3, process="child"))
    inline = get_engine(LlamaCppSettings(batch_size=2, process="inline"))
    a = [c.text for c in first.generate(REQUESTS)]
    assert [c.text for c in second.generate(REQUESTS)] == a == [c.text for c in inline.generate(REQUESTS)]
    assert first.pid is None and second.pid == started[0]  # one model at a time: second's is loaded now
    assert [c.text for c in first.generate(REQUESTS[:1])] == a[:1]  # swapped back
    assert len(started) == 1 and first.pid == started[0]


def test_a_call_stuck_in_native_code_ends_at_the_deadline_and_the_next_call_gets_a_fresh_process(monkeypatch):
    engine = get_engine(LlamaCppSettings(batch_size=2, process="child"))
    engine.generate(REQUESTS[:1])  # loaded: the deadline below is the call's alone
    first = engine.pid
    monkeypatch.setenv("STT_FAULTS", "hang-native=eval:stuck")
    t0 = time.monotonic()
    with faults.unit("eval:stuck"), deadline(3), pytest.raises(EngineHung, match="did not answer"):
        get_engine(LlamaCppSettings(batch_size=2, process="child")).generate(REQUESTS)
    assert time.monotonic() - t0 < 3 + 30
    assert engine.pid is None and _gone(first)
    monkeypatch.delenv("STT_FAULTS")
    assert get_engine(LlamaCppSettings(batch_size=2, process="child")).generate(REQUESTS[:1])
    assert engine.pid not in (None, first)


def _eval_config(tmp_path, floor_s: float) -> RunConfig:
    return RunConfig(name="hang", run_dir=tmp_path / "run", data_dir=DATA, tasks=("gsm8k",), languages=("de",),
                     engine=LlamaCppSettings(batch_size=2, process="child"),
                     eval=EvalConfig(limit=2, batch_size=2, max_new_tokens={"gsm8k": 8}),
                     timeouts=TimeoutConfig(floor_s=floor_s, min_tokens_per_s=1e6, retries=1,
                                            retry_delays_s=(0.5,)))


@pytest.mark.full  # the default tier ends a native hang at a deadline above; this adds the runner's retries
def test_the_plain_runner_ends_a_native_hang_at_the_jobs_timeout_and_retries_it(tmp_path, monkeypatch, started,
                                                                                caplog):
    from stt import jobs

    config = _eval_config(tmp_path, floor_s=6)
    [base] = [j for j in jobs.stage_jobs(config, "evaluate") if j.name == "base-de"]
    assert jobs.timeout_s(base) == 6  # floor + 2 items x 8 tokens at a million tokens/s, rounded
    monkeypatch.setenv("STT_FAULTS", "hang-native=eval:base-de")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), \
            pytest.raises(EngineHung, match="did not answer while generate within its 6 s deadline"):
        jobs.retried(jobs.run)(base)
    # Three attempts (the plain runner retries twice), each ended 6 s after its call was sent, plus loads.
    assert time.monotonic() - t0 < 3 * (6 + 30)
    assert len(started) == 3 and all(_gone(p) for p in started)  # a fresh process per attempt, each killed
    # Each attempt reached the stuck call in its own process (the line comes back through the pipe): the
    # deadline was the call's, not spent on starting the process.
    hangs = [r.getMessage() for r in caplog.records if "hangs here" in r.getMessage()]
    assert hangs == [f"STT_FAULTS hang-native: eval:base-de hangs here, in process {p}" for p in started]
    monkeypatch.delenv("STT_FAULTS")
    # Nothing stuck: the same job finishes (with the default timeouts: they are not part of any key).
    done = jobs.run(base.model_copy(update={"timeouts": TimeoutConfig()}))
    assert done["scores"]["n"] == 2 and not done.get("reused")  # both items scored now, nothing left stale


class _Lines(logging.Handler):
    """The messages of one logger. Not caplog: Prefect's logging setup, run by the first flow of a process,
    replaces the root logger's handlers (caplog's among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.full  # Prefect's task timeout, retries and a real test server: the default tier covers the deadline
def test_under_prefect_a_native_hang_is_ended_by_the_task_timeout(prefect_server, tmp_path, monkeypatch, started):
    from stt_app.flows.evaluate import evaluate_model

    monkeypatch.setenv("STT_FAULTS", "hang-native=eval:base-de")
    engine = LlamaCppSettings(batch_size=2, process="child")
    limits = TimeoutConfig(floor_s=8, min_tokens_per_s=1e6, retries=1, retry_delays_s=(0.5,))
    faults_log, seen = logging.getLogger("stt.faults"), _Lines()
    faults_log.addHandler(seen)
    t0 = time.monotonic()
    try:
        # The flow names the failed job and the task's own timeout.
        with pytest.raises(Exception, match=r"gsm8k/evaluate/base-de: Task run exceeded timeout of 8\.0 second"):
            evaluate_model("gsm8k", ["de"], engine, EvalConfig(limit=2, batch_size=2, max_new_tokens={"gsm8k": 8}),
                           out_dir=str(tmp_path / "eval"), timeouts=limits)
    finally:
        faults_log.removeHandler(seen)
    # Two attempts (one retry), each interrupted at 8 s although its engine call never returns (without a
    # child process the task would wait on the C call for good), each attempt's process killed, and each
    # had reached the stuck call (its process's line came back through the pipe).
    assert time.monotonic() - t0 < 2 * (8 + 30) + 30
    assert len(started) == 2 and all(_gone(p) for p in started)
    hangs = [line for line in seen.lines if "hangs here" in line]
    assert hangs == [f"STT_FAULTS hang-native: eval:base-de hangs here, in process {p}" for p in started]


# -- issue 35: a tagged protocol, per-call deadlines, deaths reported, no orphans ------------------------------
@pytest.mark.full  # a fault trial of the full tier: the default tier keeps one hang ended at its deadline
def test_a_call_whose_caller_stops_reading_kills_the_process_and_the_next_call_gets_its_own_answer(started):
    """A progress callback that raises leaves the child with a request nobody reads. Untagged, the next
    caller read that stale answer (a generation returned for a scoring call)."""
    engine = get_engine(LlamaCppSettings(batch_size=1, process="child"))
    inline = get_engine(LlamaCppSettings(batch_size=1, process="inline"))

    def observer_fails(done: int, total: int) -> None:
        raise RuntimeError("the progress observer failed")

    with pytest.raises(RuntimeError, match="observer failed"):
        engine.generate(REQUESTS, observer_fails)  # batch 1: progress comes before the second request's answer
    assert len(started) == 1 and _gone(started[0])  # the request was abandoned: its process went with it
    scores = engine.loglikelihood(PAIRS)
    assert [s.logprob for s in scores] == [s.logprob for s in inline.loglikelihood(PAIRS)]
    assert len(started) == 2


@pytest.mark.full  # a fault trial of the full tier: the default tier keeps one hang ended at its deadline
def test_the_deadline_counts_the_calls_own_time_not_its_wait_behind_another_call(monkeypatch, started, hang_seen):
    """A caller queued behind a hung call: measured from the caller's start, its deadline passed while it
    waited, and the fresh process that replaced the hung one was killed before it could answer."""
    import threading

    engine = get_engine(LlamaCppSettings(batch_size=2, process="child"))
    expected = engine.generate(REQUESTS[:1])[0].text  # started and loaded
    monkeypatch.setenv("STT_FAULTS", "hang-native=eval:stuck")
    hung: list[Exception] = []
    answers: list[str] = []

    def stuck() -> None:
        with faults.unit("eval:stuck"), deadline(30), pytest.raises(EngineHung) as failure:
            engine.generate(REQUESTS[:1])
        hung.append(failure.value)

    def queued() -> None:
        assert hang_seen.event.wait(60)  # behind the stuck call (in C now), which holds the engine for 30 s
        # 25 s for its own call (a fresh process's first call took up to 20 s on a loaded 2-core machine)
        with faults.unit("eval:fine"), deadline(25):
            answers.append(engine.generate(REQUESTS[:1])[0].text)

    threads = [threading.Thread(target=stuck), threading.Thread(target=queued)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(hung) == 1 and answers == [expected]
    assert len(started) == 2 and _gone(started[0]) and engine.pid == started[1]


@pytest.mark.full  # a fault trial of the full tier: the default tier keeps one hang ended at its deadline
def test_a_process_killed_from_outside_is_reported_with_its_signal_and_an_oom_kill_is_named_and_not_retried(
        monkeypatch, tmp_path, started, hang_seen):
    import signal
    import threading

    from stt.jobs import retried

    engine = get_engine(LlamaCppSettings(batch_size=2, process="child"))
    engine.generate(REQUESTS[:1])
    monkeypatch.setenv("STT_FAULTS", "hang-native=eval:stuck")

    def kill_soon(bump_oom: bool) -> None:
        assert hang_seen.event.wait(60)  # the call is stuck in C in the engine process
        hang_seen.event.clear()
        if bump_oom:  # what the kernel's OOM killer does: count the kill in memory.events, then SIGKILL
            events.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
        os.kill(started[-1], signal.SIGKILL)

    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    monkeypatch.setattr(child_module, "_OOM_EVENTS", events)
    threading.Thread(target=kill_soon, args=(False,)).start()
    with faults.unit("eval:stuck"), deadline(60), \
            pytest.raises(child_module.EngineDied, match="killed by SIGKILL") as died:
        engine.generate(REQUESTS)
    assert not isinstance(died.value, child_module.EngineOutOfMemory)
    assert "out-of-memory killer sends" in str(died.value)

    calls = []

    def call() -> None:
        calls.append(1)
        threading.Thread(target=kill_soon, args=(True,)).start()
        with faults.unit("eval:stuck"), deadline(60):
            engine.generate(REQUESTS)

    with pytest.raises(child_module.EngineOutOfMemory, match="out-of-memory killer ended it .*1 -> 2"):
        retried(call)()
    assert calls == [1]  # not retried: the same call needs the same memory
    monkeypatch.delenv("STT_FAULTS")
    assert engine.generate(REQUESTS[:1])  # and the next call is served by a fresh process


def test_a_process_that_fails_to_start_is_recovered_by_the_next_call(monkeypatch, started):
    from multiprocessing.context import SpawnProcess

    real_start, failures = SpawnProcess.start, []

    def start_once_failing(self):
        if not failures:
            failures.append(1)
            raise OSError("Resource temporarily unavailable (fork)")
        real_start(self)

    monkeypatch.setattr(SpawnProcess, "start", start_once_failing)
    engine = get_engine(LlamaCppSettings(batch_size=2, process="child"))
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        engine.generate(REQUESTS[:1])
    assert engine.generate(REQUESTS[:1]) and len(started) == 1


CALLER = """
import os
from stt import faults
from stt.engine_settings import LlamaCppSettings, engine_config
from stt.engines import Request, get_engine

if __name__ == "__main__":  # the engine process (spawned) imports this file too
    os.environ["STT_FAULTS"] = "hang-native=eval:stuck"
    engine = get_engine(LlamaCppSettings(batch_size=1, process="child"))
    with faults.unit("warm"):
        engine.generate([Request("Hello", 2, ())])
    print(engine.pid, flush=True)
    with faults.unit("eval:stuck"):
        engine.generate([Request("Hello", 2, ())])  # blocks in C in the engine process, for good
"""


def test_no_engine_process_outlives_its_parents_sigkill_while_stuck_in_native_code(tmp_path):
    """The run's process SIGKILLed (the OOM killer, a kill trial, a lost worker) while its engine process is
    inside a native call: the kernel's parent-death signal ends the engine process too."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    import select

    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([parent.stdout], [], [], 180)[0], "the caller never reported its engine process"
        engine_pid = int(parent.stdout.readline())
        time.sleep(2)  # into the stuck call
        assert not _gone(engine_pid)
    finally:
        parent.kill()
        parent.wait()
    assert parent.returncode == -signal.SIGKILL
    for _ in range(100):  # at most 20 s
        if _gone(engine_pid):
            break
        time.sleep(0.2)
    assert _gone(engine_pid), f"engine process {engine_pid} outlived its parent's SIGKILL"


@pytest.mark.full  # a fault trial of the full tier: the default tier keeps one hang ended at its deadline
def test_a_native_hang_in_fine_tuning_ends_at_its_deadline(tmp_path, monkeypatch, started, hang_seen):
    """Fine-tuning runs in the engine process (engine.process: child), so a training step stuck in C is
    ended at the job's deadline like a stuck model call; without the fault the same training finishes."""
    import pyarrow as pa

    from stt.config import TrainConfig
    from stt.files import write_parquet_atomic
    from stt.markers import mark_done
    from stt.stages.finetune import finetune
    from stt.trainsets import SET_SCHEMA

    rows = [{"id": f"x:{i}", "source_id": f"x:{i}", "language": "en", "variant": "english",
             "prompt": f"Question: What is {i} plus {i}?\nAnswer:", "target": f" {2 * i}", "fields": "{}"}
            for i in range(4)]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SET_SCHEMA), tmp_path / "set" / "data.parquet")
    mark_done(tmp_path / "set", "test-set", ["data.parquet"])
    config = TrainConfig(rank=2, alpha=4, max_steps=1, batch_size=4, max_length=48)
    monkeypatch.setenv("STT_FAULTS", "hang-native=finetune:*")
    t0 = time.monotonic()
    with deadline(5), pytest.raises(EngineHung, match="fine-tuning adapter.*within its 5 s deadline"):
        finetune("gemma3-270m", tmp_path / "set", tmp_path / "adapter", config, "cpu", supervised=True)
    assert time.monotonic() - t0 < 5 + 60 and len(started) == 1 and _gone(started[0])
    # The training itself was stuck (the engine process said so), not its start: the deadline is the run's.
    assert hang_seen.lines == [f"STT_FAULTS hang-native: finetune:adapter hangs here, in process {started[0]}"]
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    monkeypatch.delenv("STT_FAULTS")
    with deadline(300):
        done = finetune("gemma3-270m", tmp_path / "set", tmp_path / "adapter", config, "cpu", supervised=True)
    assert done["metrics"]["steps"] == 1 and len(started) == 2 and not _gone(started[1])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_prefect_retries_every_failure_but_an_out_of_memory_kill():
    """Prefect's retry_condition_fn receives the failed attempt as a state holding the exception."""
    from prefect.states import Failed

    from stt.engines.child import EngineOutOfMemory
    from stt_app.tasks.jobs import retry_condition as prefect_retry_condition
    from stt_app.tasks.jobs import task_options

    assert task_options(10, TimeoutConfig())["retry_condition_fn"] is prefect_retry_condition
    assert prefect_retry_condition(None, None, Failed(data=EngineHung("hung")))
    assert prefect_retry_condition(None, None, Failed(data=RuntimeError("anything else")))
    assert not prefect_retry_condition(None, None, Failed(data=EngineOutOfMemory("killed for memory")))


@pytest.mark.full  # a fault trial of the full tier: the default tier keeps one hang ended at its deadline
def test_plain_translate_ends_a_native_hang_at_the_shards_timeout(tmp_path, monkeypatch, started):
    """`stt translate --no-prefect` (stt.jobs.translate) set no deadline: a stuck call held it for
    good. Each shard's calls now get the shard's timeout, as under the translate flow."""
    from stt import jobs
    from stt.config import GenerationParams, TranslateConfig

    config = TranslateConfig(task="gsm8k", languages=("de",), limit=1, shard_size=1, out_dir=tmp_path / "out",
                             engine=LlamaCppSettings(batch_size=2, process="child"),
                             generation=GenerationParams(max_new_tokens_cap=8),
                             timeouts=TimeoutConfig(floor_s=5, min_tokens_per_s=1e6))
    monkeypatch.setenv("STT_FAULTS", "hang-native=de-00000")
    t0 = time.monotonic()
    with pytest.raises(EngineHung, match="within its 5 s deadline"):
        jobs.translate(config)
    assert time.monotonic() - t0 < 3 * (5 + 30)  # three attempts (the plain runner's retries)
    assert len(started) == 3 and all(_gone(p) for p in started)
