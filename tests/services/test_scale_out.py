"""Scale-out for real: one run's translate shards spread over three process workers of the gpu pool.

The session's service stack (tests/services/conftest.py). The `translate-stage/fan-out`
deployment (cpu pool) plans 6 shards and sends them, two per flow run, to `run-jobs/gpu`; three gpu
workers (one flow run at a time each, each with its own model slot, as scripts/worker.sh starts one per
GPU) take them. The output must equal a single-process run of the same config row for row. Then a worker
is SIGKILLed while its flow run is on a shard group: the run is marked Crashed once its heartbeats stop
(deployments/automations.yaml), the parent submits the group again, another worker does it, and the
output again equals the single-process run, with no row lost and none twice. That second run lives on object
storage (a real S3 server, SeaweedFS): the parent and every gpu worker are separate "machines" (own working
directory, HOME, mirror, Prefect home and result folder), sharing only the bucket; the workers keep Prefect's
results in it too (an S3Bucket block, PREFECT_DEFAULT_RESULT_STORAGE_BLOCK).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from stt.config import RunConfig

from ..machine import machine_home
from ..object_store import s3_server
from .stack import ROOT
from .test_services import _client, _until

# 1,800 s, not the full tier's 900: the first test also builds the service stack (about 6 min in CI), and four
# machines of their own (each its own HOME: the model unpacked and hashed once per worker) share 2 cores there.
pytestmark = [pytest.mark.model, pytest.mark.services, pytest.mark.full, pytest.mark.timeout(1800)]

SHARDS = 6
CONFIG = {
    "tasks": ["gsm8k"], "languages": ["de"], "limit": SHARDS, "shard_size": 1,
    "engine": {"kind": "llama-cpp", "model": "gemma3-270m", "batch_size": 4},
    "generation": {"max_new_tokens_cap": 40}, "eval": {"quality_limit": 2},
    "scale_out": {"mode": "deployments", "deployment": "run-jobs/gpu", "group_size": 2, "poll_s": 2},
}
WORKERS = 3


def _config(name: str, run_dir: Path | str, **update) -> RunConfig:
    return RunConfig.model_validate({**CONFIG, "name": name, "run_dir": str(run_dir), **update})


def _outputs(run_dir: Path) -> dict[str, pd.DataFrame]:
    task = run_dir / "gsm8k"
    out = {f"translate/{p.name}": pd.read_parquet(p) for p in sorted((task / "translate").glob("de-*.parquet"))}
    rejects = sorted((task / "translate" / "_rejects").glob("*.parquet"))
    out |= {f"rejects/{p.name}": pd.read_parquet(p) for p in rejects}
    out["quality"] = pd.read_parquet(task / "quality" / "de" / "translations.parquet")
    return {k: v.sort_values("id").reset_index(drop=True) for k, v in out.items()}


def _rows(outputs: dict[str, pd.DataFrame]) -> list[str]:
    """Every translated or set-aside example id, once per time it is written."""
    return [i for k, df in outputs.items() if not k.startswith("quality") for i in df["id"]]


def _assert_same(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        # Timing columns differ between runs; everything the model wrote, and every decision, must not.
        drop = [c for c in want[name].columns if "seconds" in c]
        pd.testing.assert_frame_equal(got[name].drop(columns=drop), want[name].drop(columns=drop), obj=name)


def _job_runs(name: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"stt-run:{name}"])))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same translation in this process, no Prefect: the output every scaled-out run must equal."""
    from stt.jobs import run_plan

    run_dir = tmp_path_factory.mktemp("scale-out") / "single"
    config = _config("single", run_dir, scale_out={})
    t0 = time.time()
    run_plan(config, ("translate", "quality"))
    return {"outputs": _outputs(run_dir), "seconds": time.time() - t0}


@pytest.fixture(scope="module")
def s3(stack, tmp_path_factory):
    """The S3 server, and Prefect's result storage in it (the S3Bucket block the workers name)."""
    from stt_app.tasks.store_blocks import register

    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        results_url = server.url()
        env = server.env()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # this process reads the run back from the store
        env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] = register(results_url, "stt-results-scale-out")
        env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
        yield {"server": server, "env": env, "results": results_url}
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _machine(folder: Path, s3_env: dict[str, str]) -> dict[str, str]:
    """A worker's environment as on a machine of its own: its own checkout (the flows run there, and the run's
    mirror is relative to it), HOME, Prefect home and local result folder; the data, the installed packages
    and the model as an image would hold them (tests/machine.py); the store's credentials."""
    checkout = folder / "stt"
    for part in ("stt", "stt_app", "configs", "deployments"):
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    from stt.config import resolve_data_dir

    return {**s3_env, "STT_PROJECT_DIR": str(checkout), "HOME": str(machine_home(folder / "home")),
            "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_LOCAL_STORAGE_PATH": str(folder / "results"),
            "STT_DATA_DIR": str(resolve_data_dir(None))}


@pytest.fixture(scope="module")
def workers(stack, s3, tmp_path_factory):
    """Three gpu workers (two more beside the stack's own), one flow run at a time each, own model slots; they
    and the cpu worker (the fan-out's parent) each on a machine of its own (_machine).
    Afterwards the stack is as the other service tests expect it: one gpu worker, a pool limit of 1."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    with _client() as client:
        client.update_work_pool("gpu", WorkPoolUpdate(concurrency_limit=WORKERS))
    stack["procs"].kill("worker-gpu")
    stack["start_worker"]("gpu", "test-gpu", extra_env=_machine(tmp_path_factory.mktemp("machine-gpu-1"), s3["env"]))
    stack["procs"].kill("worker-cpu")
    stack["start_worker"]("cpu", "test-cpu-planner",
                          extra_env=_machine(tmp_path_factory.mktemp("machine-cpu"), s3["env"]))
    names = {"test-gpu": "worker-gpu"}  # worker name -> process name (to kill it)
    for i in range(2, WORKERS + 1):
        name = f"test-gpu-{i}"
        stack["start_worker"]("gpu", name, process=name, extra_env={
            **_machine(tmp_path_factory.mktemp(f"machine-gpu-{i}"), s3["env"]), "STT_MODEL_SLOT": f"stt-model-{name}"})
        names[name] = name
    yield names
    # A run of this module still going (a test that failed early) must not hold the gpu pool's slot for the
    # tests after it: cancel what is not final before the workers go.
    from prefect.states import Cancelled

    from .test_services import _runs_of

    leftover = [*_runs_of("fan-out", "translate-stage"), *_job_runs("fan-three"), *_job_runs("fan-kill")]
    with _client() as client:
        for r in leftover:  # the parents first: a parent left going would submit its groups again
            if r.state is not None and not r.state.is_final():
                client.set_flow_run_state(r.id, Cancelled(), force=True)
    for name in names:
        if name != "test-gpu":
            stack["procs"].kill(name)
    for process, pool in (("worker-gpu", "gpu"), ("worker-cpu", "cpu")):  # back to the stack's own settings
        stack["procs"].kill(process)
        stack["start_worker"](pool, f"test-{pool}")
    with _client() as client:
        client.update_work_pool("gpu", WorkPoolUpdate(concurrency_limit=1))


def test_a_translation_spreads_over_three_workers_and_equals_one_process(stack, workers, reference, tmp_path):
    from stt_app.client import run

    config = _config("fan-three", tmp_path / "fan")
    t0 = time.time()
    done = run("translate-stage/fan-out", config=config, timeout=1500)
    seconds = time.time() - t0
    assert done.state == "Completed"
    runs = [r for r in _job_runs(config.name) if r.state and r.state.type.value == "COMPLETED"]
    by_worker: dict[str, int] = {}
    for r in runs:
        by_worker[r.labels["prefect.worker.name"]] = by_worker.get(r.labels["prefect.worker.name"], 0) + 1
    assert sorted(by_worker) == sorted(workers), by_worker  # every worker did work
    assert len(runs) == SHARDS // 2 + 1  # three shard groups and the quality job, each run once
    got = _outputs(tmp_path / "fan")
    _assert_same(got, reference["outputs"])
    assert sorted(_rows(got)) == sorted(_rows(reference["outputs"])) and len(set(_rows(got))) == SHARDS
    print(f"3 workers: flow runs per worker {by_worker}; {seconds:.0f}s vs {reference['seconds']:.0f}s in one "
          f"process; {len(_rows(got))} rows compared, 0 lost, 0 twice")


def test_a_worker_killed_mid_shard_is_replaced_and_nothing_is_lost_or_doubled(stack, s3, workers, reference,
                                                                              tmp_path):
    """On S3, machines sharing only the bucket."""
    from stt.store import RunStore
    from stt_app.client import submit, wait

    url = s3["server"].url()
    config = _config("fan-kill", url)
    results = s3["results"].removeprefix("s3://")
    reader = RunStore(url, tmp_path / "reader")  # this process: another machine, reading the run from the store
    reader.fs.invalidate_cache()
    results_before = set(reader.fs.find(results))
    t0 = time.time()
    handle = submit("translate-stage/fan-out", config=config)

    def running_job_run():
        live = [r for r in _job_runs(config.name) if r.state and r.state.type.value == "RUNNING"
                and "prefect.worker.name" in (r.labels or {})]
        return live[0] if live else None

    victim = _until(running_job_run, 600, "a run-jobs flow run to start on a worker", poll=0.5)
    worker = victim.labels["prefect.worker.name"]
    stack["procs"].kill(workers[worker])  # the worker and its flow-run process, SIGKILL, mid-group
    killed_at = time.time()
    done = wait(handle, timeout=1500)
    assert done.state == "Completed"
    runs = {r.id: r for r in _job_runs(config.name)}
    assert runs[victim.id].state.type.value == "CRASHED"  # found by the zombie automation, not left Running
    again = [r for r in runs.values() if r.name.startswith(victim.name.rsplit(" #", 1)[0]) and r.id != victim.id]
    assert again and all(r.state.type.value == "COMPLETED" for r in again), [(r.name, r.state) for r in again]
    assert all(r.labels["prefect.worker.name"] != worker for r in again)
    reader.pull([reader.root / "gsm8k" / "translate", reader.root / "gsm8k" / "quality" / "de"])
    got = _outputs(reader.root)
    _assert_same(got, reference["outputs"])
    assert sorted(_rows(got)) == sorted(_rows(reference["outputs"])) and len(set(_rows(got))) == SHARDS
    # This run's Prefect results went to the bucket too (the flows' and their stage-job tasks' records).
    reader.fs.invalidate_cache()
    new_results = set(reader.fs.find(results)) - results_before
    assert len(new_results) >= SHARDS, f"{len(new_results)} new Prefect results in {s3['results']}"
    # The fan-out deployment runs the stage alone (announce: false): no chained stage was started by either run.
    from .test_services import _runs_of

    assert _runs_of("chain", "build-sets") == []
    print(f"worker {worker} killed {killed_at - t0:.0f}s in; its group {victim.name!r} Crashed and redone by "
          f"{again[0].labels['prefect.worker.name']}; run done {time.time() - killed_at:.0f}s after the kill; "
          f"{len(_rows(got))} rows compared, 0 lost, 0 twice")
