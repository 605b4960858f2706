"""Operate it for real: PostgreSQL + `prefect server start` + `prefect deploy --all` + process workers.

The end-to-end demo deployment is triggered from Python through `stt_app.client` while the server and then the
database are restarted under it; the chained stage deployments run one after another through their event
triggers on the same run folder with one evaluation setting changed (only evaluation reruns); a worker is
killed while its run holds the model slot, and the rerun reuses every finished stage; a schedule produces a
run; a run lost before its first heartbeat is crashed. One stack for all (tests/services/conftest.py).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pandas as pd
import pytest

from stt.config import RunConfig

from .conftest import ZOMBIE_WINDOW_S

pytestmark = [pytest.mark.model, pytest.mark.services, pytest.mark.full]

TINY = {
    "tasks": ["gsm8k"], "languages": ["de"], "limit": 3, "shard_size": 3,
    "engine": {"kind": "llama-cpp", "model": "gemma3-270m", "batch_size": 4}, "generation": {"max_new_tokens_cap": 40},
    "train": {"rank": 4, "alpha": 8, "max_steps": 1, "batch_size": 2, "max_length": 96},
    "eval": {"limit": 2, "batch_size": 2, "max_new_tokens": {"gsm8k": 12}, "quality_limit": 2},
}


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _runs_of(deployment_name: str, flow_name: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    with _client() as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))


def _until(condition, timeout: float, what: str, poll: float = 1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _state(flow_run_id) -> str:
    with _client() as client:
        run = client.read_flow_run(flow_run_id)
    return run.state.type.value if run.state else ""


def _check_outputs(run_dir, config: RunConfig) -> None:
    """Everything a finished run should hold is there, verified against its manifests, nothing partial."""
    from ..test_kill_resume import reader_view_problems

    assert reader_view_problems(run_dir) == []
    results = pd.read_parquet(run_dir / "results.parquet")
    assert set(results["language"]) == {"en", "de"}
    from stt.pipeline import plan_task

    plan = plan_task(config, "gsm8k")  # every planned stage output is there, its marker written last
    folders = [plan.set_dir(s.name) for s in plan.sets] + [plan.adapter_dir(a.name) for a in plan.adapters]
    folders += [plan.eval_dir(j) for j in plan.evals]
    assert [f for f in folders if not (f / "_manifest.json").is_file()] == []


def _markers(run_dir, *stage_globs: str) -> dict[str, dict]:
    """The stage markers under the run folder: key, time written, checksums; for the translate stage each
    shard's entry (its manifest's `updated` time changes whenever a run plans the stage, done or not)."""
    out = {}
    for g in stage_globs:
        for p in sorted(run_dir.glob(g)):
            info = json.loads(p.read_text())
            out[str(p.relative_to(run_dir))] = info["shards"] if p.parent.name == "translate" else info
    return out


def test_the_api_requires_the_auth_string(stack):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stack['api']}/flows/filter", data=b"{}", timeout=10)
    assert refused.value.code == 401
    assert urllib.request.urlopen(f"{stack['api']}/health", timeout=10).status == 200  # probes stay open


def test_deployments_are_registered(stack, silent_runs):
    with _client() as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        pools = {p.name: p for p in client.read_work_pools()}
    assert {"self-translate-train/demo", "self-translate-train/fan-out", "translate-stage/fan-out", "run-jobs/gpu",
            "translate-stage/chain", "build-sets/chain", "finetune/chain",
            "evaluate-stage/chain", "report/chain", "evaluate/adhoc", "check-data/daily"} <= names
    assert pools["gpu"].type == pools["cpu"].type == "process" and pools["gpu"].concurrency_limit == 1
    with _client() as client:  # a lost worker's run is crashed when its heartbeats stop (frees the pool)
        [zombies] = client.read_automations_by_name("stt-crash-zombie-flow-runs")
    assert zombies.enabled and zombies.actions[0].type == "change-flow-run-state"
    # The watch also starts at Running: a run whose worker dies before its first heartbeat is not missed.
    assert zombies.trigger.after == {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
    assert zombies.trigger.within.total_seconds() == ZOMBIE_WINDOW_S  # the window deployed
    with _client() as client:  # every flow run of a deployment sends heartbeats, whoever started its worker
        envs = {d.name: (d.job_variables or {}).get("env", {}) for d in client.read_deployments()}
    assert all(env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") == "30" for env in envs.values()), envs


@pytest.fixture(scope="module")
def first_run(stack, tmp_path_factory):
    """The demo deployment on the tiny config, from Python, with the Prefect server SIGKILLed and started
    again during translation and PostgreSQL restarted during training: the run must still complete. Later
    tests change one setting of this run's config and rerun it on the same folder."""
    from stt_app.client import submit, wait

    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    config = RunConfig.model_validate({**TINY, "name": "svc-e2e", "run_dir": str(run_dir)})
    t0 = time.time()
    handle = submit("self-translate-train/demo", config=config)
    _until(lambda: (run_dir / "gsm8k" / "translate" / "_manifest.json").exists(), 600, "the translate stage")
    stack["procs"].kill("server")  # SIGKILL: the API is gone mid-run, with no goodbye
    time.sleep(2)
    stack["start_server"]()
    _until(lambda: list((run_dir / "gsm8k" / "sets").glob("*/_manifest.json")), 900, "the build stage")
    stack["pg"].restart(down_s=3)  # every open database connection is cut
    restarted = time.time()
    done = wait(handle, timeout=1200)
    return {"config": config, "handle": handle, "done": done, "seconds": time.time() - t0,
            "after_db_restart_s": time.time() - restarted}


def test_end_to_end_deployment_survives_server_and_database_restarts(stack, first_run):
    done, config, handle = first_run["done"], first_run["config"], first_run["handle"]
    assert done.state == "Completed", stack["procs"].log("worker-gpu")[-4000:]
    results = pd.read_parquet(done.outputs["results"])
    assert set(results["language"]) == {"en", "de"}
    assert (config.root / "report.md").read_text().startswith("# Self-Translate-Train")
    assert done.result and done.result["report"] == done.outputs["report"]
    # The run is in PostgreSQL, completed, with its parameters, visible after both restarts.
    rows = stack["pg"].query(f"select state_type, parameters::text from flow_run where id = '{handle.flow_run_id}'")
    assert rows and rows[0][0] == "COMPLETED" and "svc-e2e" in rows[0][1]
    subflows = stack["pg"].query(f"select count(*) from flow_run where parent_task_run_id in (select id from task_run "
                                 f"where flow_run_id = '{handle.flow_run_id}')")
    assert int(subflows[0][0]) >= 5  # translate, build, finetune, evaluate, report stages
    _check_outputs(config.root, config)
    print(f"end-to-end deployment run with a server kill and a database restart: {first_run['seconds']:.0f}s "
          f"({first_run['after_db_restart_s']:.0f}s after the database restart)")


def test_chained_deployments_run_in_order_and_rerun_only_evaluation(stack, first_run):
    from stt_app.client import submit, wait

    base = first_run["config"]
    run_dir = base.root
    kept = _markers(run_dir, "gsm8k/sets/*/_manifest.json", "gsm8k/adapters/*/_manifest.json",
                    "gsm8k/quality/*/_manifest.json", "gsm8k/translate/_manifest.json")
    # translation, two sets, two adapters (under train.max_steps the equal-steps control is the zero-shot
    # adapter itself and is not trained again), quality
    assert len(kept) == 1 + 2 + 2 + 1
    evals_before = _markers(run_dir, "gsm8k/eval/*/_manifest.json")
    config = RunConfig.model_validate({**json.loads(base.model_dump_json()), "name": "svc-chain",
                                       "eval": {**TINY["eval"], "max_new_tokens": {"gsm8k": 8}}})
    t0 = time.time()
    wait(submit("translate-stage/chain", config=config), timeout=900)
    chain = [("build-sets", "chain"), ("finetune", "chain"), ("evaluate-stage", "chain"), ("report", "chain")]
    deadline = time.time() + 900
    finished = {}
    while time.time() < deadline and len(finished) < len(chain):
        for flow_name, dep in chain:
            runs = [r for r in _runs_of(dep, flow_name) if r.parameters.get("config", {}).get("name") == "svc-chain"]
            if runs and runs[0].state and runs[0].state.is_final():
                assert runs[0].state.is_completed(), f"{flow_name}: {runs[0].state.message}"
                finished[flow_name] = runs[0]
        time.sleep(1)
    assert len(finished) == len(chain), f"chain stopped after {list(finished)}"
    starts = [finished[f].start_time for f, _ in chain]
    ends = [finished[f].end_time for f, _ in chain]
    assert all(ends[i] <= starts[i + 1] for i in range(len(chain) - 1))  # each began after the previous ended
    with _client() as client:
        events = client.request("POST", "/events/filter", json={"filter": {"event": {"prefix": ["stt."]}}}).json()
    names = {e["event"] for e in events["events"]}
    assert {"stt.translate.completed", "stt.sets.built", "stt.finetune.completed", "stt.evaluate.completed"} <= names
    # One evaluation setting changed: translation, quality, sets and adapters were reused, untouched; every
    # evaluation was redone under a new key, with the new setting.
    assert _markers(run_dir, *kept) == kept
    evals_after = _markers(run_dir, "gsm8k/eval/*/_manifest.json")
    assert sorted(evals_after) == sorted(evals_before)
    assert all(evals_after[k]["key"] != evals_before[k]["key"] for k in evals_before)
    preds = pd.read_parquet(run_dir / "gsm8k" / "eval" / "zero-shot-de" / "predictions.parquet")
    assert (preds["completion_tokens"] <= 8).all()
    print(f"chained deployments (evaluation only): {time.time() - t0:.1f}s")


def test_a_worker_killed_mid_run_frees_its_slot_and_the_rerun_reuses_finished_work(stack, first_run):
    """SIGKILL the gpu worker and its flow-run process while a model-holding task holds the machine's model
    slot (a training setting changed, so fine-tuning runs): the slot frees itself within its lease, the zombie
    run is marked Crashed once its heartbeats stop (deployments/automations.yaml), and the same config
    submitted again completes, reusing the translation and the sets made before the kill."""
    from prefect.client.orchestration import get_client

    from stt_app.client import run, submit
    from stt_app.tasks.model_slot import SLOT_LEASE_SECONDS, model_slot_name

    def held() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(model_slot_name()).active_slots

    base = first_run["config"]
    run_dir = base.root
    reused = _markers(run_dir, "gsm8k/translate/_manifest.json", "gsm8k/sets/*/_manifest.json",
                      "gsm8k/quality/*/_manifest.json")
    assert len(reused) == 4  # translation, the two sets, quality
    config = RunConfig.model_validate({**json.loads(base.model_dump_json()), "name": "svc-worker-kill",
                                       "train": {**TINY["train"], "learning_rate": 0.001}})
    handle = submit("self-translate-train/demo", config=config)
    _until(lambda: _state(handle.flow_run_id) == "RUNNING" and held() > 0, 600, "a task holding the model slot",
           poll=0.5)
    stack["procs"].kill("worker-gpu")
    killed_at = time.time()
    _until(lambda: held() == 0, SLOT_LEASE_SECONDS + 60, "the model slot to be released")
    freed_s = time.time() - killed_at
    assert freed_s <= SLOT_LEASE_SECONDS + 30
    _until(lambda: _state(handle.flow_run_id) == "CRASHED", 30 + ZOMBIE_WINDOW_S + 60,
           "the zombie run to be marked Crashed")
    crashed_s = time.time() - killed_at
    stack["start_worker"]("gpu")
    rerun = run("self-translate-train/demo", config=config, timeout=1200)
    assert rerun.state == "Completed", stack["procs"].log("worker-gpu")[-4000:]
    _check_outputs(run_dir, config)
    # Reused, not redone: the markers written before the kill are the ones on disk (same key, same time).
    assert _markers(run_dir, *reused) == reused
    adapter = json.loads((run_dir / "gsm8k" / "adapters" / "english" / "_manifest.json").read_text())
    assert adapter["config"]["learning_rate"] == 0.001  # and the changed stage was redone
    print(f"worker killed: slot free after {freed_s:.0f}s, run Crashed after {crashed_s:.0f}s")


def test_a_schedule_produces_a_run(stack):
    from prefect.client.schemas.schedules import IntervalSchedule

    with _client() as client:
        dep = client.read_deployment_by_name("check-data/daily")
        [every_10s] = client.create_deployment_schedules(dep.id, [(IntervalSchedule(interval=timedelta(seconds=10)),
                                                                   True)])
    try:
        done = _until(lambda: next((r for r in _runs_of("daily", "check-data") if r.auto_scheduled and r.state
                                    and r.state.is_completed()), None), 180, "a scheduled run to complete")
    except AssertionError as e:  # the scheduler's own failure is only in the server's log (Prefect 3.9.0 once)
        errors = [line for line in stack["procs"].log("server").splitlines() if "ERROR" in line or "Error" in line]
        raise AssertionError(f"{e}; the server's last errors: {errors[-5:]}") from None
    rows = stack["pg"].query(f"select auto_scheduled, state_type from flow_run where id = '{done.id}'")
    assert rows == [["t", "COMPLETED"]]
    with _client() as client:  # stop scheduling: later tests read the flow runs
        client.delete_deployment_schedule(dep.id, every_10s.id)


def test_a_run_lost_before_its_first_heartbeat_is_crashed_and_untagged_runs_are_left_alone(stack, silent_runs):
    """A worker killed in the first second of a run, before any heartbeat reached the server, must not leave
    its run Running for ever; a run that never sends heartbeats and is not an `stt` run must not be crashed.
    Both were made Running when the stack started (conftest.silent_runs), then left silent."""
    from prefect.states import Cancelled

    _until(lambda: _state(silent_runs["ours"]) == "CRASHED", ZOMBIE_WINDOW_S + 90,
           "the silent stt run to be marked Crashed")
    crashed_s = time.time() - silent_runs["since"]
    assert _state(silent_runs["other"]) == "RUNNING"  # same silence, not ours: untouched
    with _client() as client:
        client.set_flow_run_state(silent_runs["other"], Cancelled(), force=True)
    print(f"silent stt run Crashed within {crashed_s:.0f}s of Running; the untagged one left Running")
