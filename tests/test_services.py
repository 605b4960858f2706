"""Operate it for real: PostgreSQL + `prefect server start` + `prefect deploy --all` + process workers.

The end-to-end demo deployment is triggered from Python through `stt.client`; the chained stage
deployments run one after another through their event triggers; a schedule produces a run; the flow
runs are read back from PostgreSQL. Everything is stopped at the end and checked gone.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta

import pandas as pd
import pytest

from stt.config import RunConfig

from .services import ROOT, VENV_BIN, Postgres, Processes, free_port, pg_bin, wait_healthy

pytestmark = [pytest.mark.model, pytest.mark.services]

AUTH = "stt-test:not-a-secret"

TINY = {
    "tasks": ["gsm8k"], "languages": ["de"], "limit": 3, "shard_size": 3,
    "engine": {"model": "gemma3-270m", "batch_size": 4}, "generation": {"max_new_tokens_cap": 40},
    "train": {"rank": 4, "alpha": 8, "max_steps": 1, "batch_size": 2, "max_length": 96},
    "eval": {"limit": 2, "batch_size": 2, "max_new_tokens_math": 12, "quality_limit": 2},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if pg_bin() is None:
        pytest.fail("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does it)")
    folder = tmp_path_factory.mktemp("services")
    pg = Postgres()
    procs = Processes(folder)
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(folder / "prefect-home"),
           "PREFECT_LOCAL_STORAGE_PATH": str(folder / "results"),  # shared by workers and this test: results
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "STT_PROJECT_DIR": str(ROOT),
           "PREFECT_API_AUTH_STRING": AUTH,  # basic auth on, as in docker-compose.yml
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # as in docker-compose.yml: a lost worker's run is crashed
           # As in docker-compose.yml: a database restart's moment of 500s is retried, not fatal to a run.
           "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500", "PREFECT_CLIENT_MAX_RETRIES": "8",
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_KEY", None)
    try:
        t0 = time.time()
        db_url = pg.start()
        port = api.split(":")[2].split("/")[0]
        def start_server() -> None:
            server = procs.start("server", [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                            "--port", port], {
                **env, "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
                "PREFECT_SERVER_API_AUTH_STRING": AUTH,
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"})
            wait_healthy(api, server)

        start_server()
        deploy = subprocess.run(["bash", "scripts/deploy.sh"], cwd=ROOT, env={**env, "PREFECT": str(VENV_BIN /
                                "prefect")}, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for pool in ("gpu", "cpu"):  # a gpu worker takes one flow run at a time, as scripts/worker.sh starts it
            procs.start(f"worker-{pool}", [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                                           "process", "--name", f"test-{pool}",
                                           *(["--limit", "1"] if pool == "gpu" else [])], env)
        # This process's Prefect client must talk to this server, even when another test module's
        # prefect_test_harness is active in the same session: settings, not only the environment.
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_URL,
            PREFECT_CLIENT_MAX_RETRIES,
            PREFECT_CLIENT_RETRY_EXTRA_CODES,
            PREFECT_LOCAL_STORAGE_PATH,
            temporary_settings,
        )

        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH,
                                 PREFECT_LOCAL_STORAGE_PATH: env["PREFECT_LOCAL_STORAGE_PATH"],
                                 PREFECT_CLIENT_RETRY_EXTRA_CODES: {500}, PREFECT_CLIENT_MAX_RETRIES: 8}):
            yield {"api": api, "pg": pg, "procs": procs, "folder": folder, "started_in": time.time() - t0, "env": env,
                   "deploy_output": deploy.stdout, "start_server": start_server,
                   "start_worker": lambda pool: procs.start(f"worker-{pool}", [
                       str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                       "--name", f"test-{pool}-{time.time():.0f}", *(["--limit", "1"] if pool == "gpu" else [])],
                       env)}
    finally:
        killed = procs.stop()
        pg.stop()
        assert not procs.group_alive(), f"processes left behind: {procs.group_alive()}"
        assert not pg.running(), "PostgreSQL still running"
        pg.remove()
        print(f"services stopped (needed SIGKILL: {killed or 'none'})")


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _runs_of(deployment_name: str, flow_name: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    with _client() as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))


def test_the_api_requires_the_auth_string(stack):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stack['api']}/flows/filter", data=b"{}", timeout=10)
    assert refused.value.code == 401
    assert urllib.request.urlopen(f"{stack['api']}/health", timeout=10).status == 200  # probes stay open


def test_deployments_are_registered(stack):
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
    with _client() as client:  # every flow run of a deployment sends heartbeats, whoever started its worker
        envs = {d.name: (d.job_variables or {}).get("env", {}) for d in client.read_deployments()}
    assert all(env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") == "30" for env in envs.values()), envs


def test_a_run_lost_before_its_first_heartbeat_is_crashed_and_untagged_runs_are_left_alone(stack):
    """A worker killed in the first second of a run, before any heartbeat reached the server, must not leave
    its run Running for ever; a run that never sends heartbeats and is not an `stt` run must not be crashed.
    Both runs are made Running through the API and then left silent, as a dead worker leaves them."""
    from prefect.states import Cancelled, Running

    from flows.run_jobs import run_jobs

    with _client() as client:
        ours = client.create_flow_run(run_jobs, name="lost-before-heartbeat", tags=["stt"])
        other = client.create_flow_run(run_jobs, name="someone-elses-run", tags=["not-stt"])
        for run in (ours, other):
            client.set_flow_run_state(run.id, Running(), force=True)
    t0 = time.time()
    _until(lambda: _state(ours.id) == "CRASHED", 90 + 90, "the silent stt run to be marked Crashed")
    crashed_s = time.time() - t0
    assert _state(other.id) == "RUNNING"  # same silence, not ours: untouched
    with _client() as client:
        client.set_flow_run_state(other.id, Cancelled(), force=True)
    print(f"silent stt run Crashed {crashed_s:.0f}s after Running; the untagged one left Running")


def test_end_to_end_deployment_from_python(stack, tmp_path):
    from stt.client import run

    config = RunConfig.model_validate({**TINY, "name": "svc-e2e", "run_dir": str(tmp_path / "e2e")})
    t0 = time.time()
    handle = run("self-translate-train/demo", config=config, timeout=1200)
    took = time.time() - t0
    assert handle.state == "Completed", stack["procs"].log("worker-gpu")[-4000:]
    results = pd.read_parquet(handle.outputs["results"])
    assert set(results["language"]) == {"en", "de"}
    assert (tmp_path / "e2e" / "report.md").read_text().startswith("# Self-Translate-Train")
    assert handle.result and handle.result["report"] == handle.outputs["report"]
    # The run is in PostgreSQL, completed, with its parameters.
    rows = stack["pg"].query(f"select state_type, parameters::text from flow_run where id = '{handle.flow_run_id}'")
    assert rows and rows[0][0] == "COMPLETED" and "svc-e2e" in rows[0][1]
    subflows = stack["pg"].query(f"select count(*) from flow_run where parent_task_run_id in (select id from task_run "
                                 f"where flow_run_id = '{handle.flow_run_id}')")
    assert int(subflows[0][0]) >= 5  # translate, build, finetune, evaluate, report stages
    print(f"end-to-end deployment run: {took:.1f}s")


def test_chained_deployments_run_in_order(stack, tmp_path):
    from stt.client import submit, wait

    config = RunConfig.model_validate({**TINY, "name": "svc-chain", "run_dir": str(tmp_path / "chain")})
    t0 = time.time()
    wait(submit("translate-stage/chain", config=config), timeout=900)
    chain = [("build-sets", "chain"), ("finetune", "chain"), ("evaluate-stage", "chain"), ("report", "chain")]
    deadline = time.time() + 1200
    finished = {}
    while time.time() < deadline and len(finished) < len(chain):
        for flow_name, dep in chain:
            runs = [r for r in _runs_of(dep, flow_name) if r.parameters.get("config", {}).get("name") == "svc-chain"]
            if runs and runs[0].state and runs[0].state.is_final():
                assert runs[0].state.is_completed(), f"{flow_name}: {runs[0].state.message}"
                finished[flow_name] = runs[0]
        time.sleep(3)
    assert len(finished) == len(chain), f"chain stopped after {list(finished)}"
    starts = [finished[f].start_time for f, _ in chain]
    ends = [finished[f].end_time for f, _ in chain]
    assert all(ends[i] <= starts[i + 1] for i in range(len(chain) - 1))  # each began after the previous ended
    assert (tmp_path / "chain" / "results.parquet").is_file()
    with _client() as client:
        events = client.request("POST", "/events/filter", json={"filter": {"event": {"prefix": ["stt."]}}}).json()
    names = {e["event"] for e in events["events"]}
    assert {"stt.translate.completed", "stt.sets.built", "stt.finetune.completed", "stt.evaluate.completed"} <= names
    print(f"chained deployments: {time.time() - t0:.1f}s")


def test_a_schedule_produces_a_run(stack):
    from prefect.client.schemas.schedules import IntervalSchedule

    with _client() as client:
        dep = client.read_deployment_by_name("check-data/daily")
        client.create_deployment_schedules(dep.id, [(IntervalSchedule(interval=timedelta(seconds=10)), True)])
    deadline = time.time() + 180
    done = None
    while time.time() < deadline and done is None:
        done = next((r for r in _runs_of("daily", "check-data") if r.auto_scheduled and r.state
                     and r.state.is_completed()), None)
        time.sleep(3)
    assert done is not None, stack["procs"].log("worker-cpu")[-3000:]
    rows = stack["pg"].query(f"select auto_scheduled, state_type from flow_run where id = '{done.id}'")
    assert rows == [["t", "COMPLETED"]]


def _until(condition, timeout: float, what: str, poll: float = 2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _check_outputs(run_dir, config: RunConfig) -> None:
    """Everything a finished run should hold is there, verified against its manifests, nothing partial."""
    from .test_kill_resume import reader_view_problems

    assert reader_view_problems(run_dir) == []
    results = pd.read_parquet(run_dir / "results.parquet")
    assert set(results["language"]) == {"en", "de"}
    from stt.pipeline import plan_task

    plan = plan_task(config, "gsm8k")  # every planned stage output is there, its marker written last
    folders = [plan.set_dir(s.name) for s in plan.sets] + [plan.adapter_dir(a.name) for a in plan.adapters]
    folders += [plan.eval_dir(j) for j in plan.evals]
    assert [f for f in folders if not (f / "_manifest.json").is_file()] == []


def _state(flow_run_id) -> str:
    with _client() as client:
        run = client.read_flow_run(flow_run_id)
    return run.state.type.value if run.state else ""


def test_server_and_database_restarts_mid_run_lose_nothing(stack, tmp_path):
    """The Prefect server is killed and started again, then PostgreSQL is restarted, while a worker runs a
    flow: the run still reaches Completed, visible after the restarts, with every output in place."""
    from stt.client import submit, wait

    run_dir = tmp_path / "restarts"
    config = RunConfig.model_validate({**TINY, "name": "svc-restarts", "run_dir": str(run_dir)})
    handle = submit("self-translate-train/demo", config=config)
    _until(lambda: (run_dir / "gsm8k" / "translate" / "_manifest.json").exists(), 600, "the translate stage")
    stack["procs"].kill("server")  # SIGKILL: the API is gone mid-run, with no goodbye
    time.sleep(5)
    stack["start_server"]()
    _until(lambda: list((run_dir / "gsm8k" / "sets").glob("*/_manifest.json")), 900, "the build stage")
    stack["pg"].restart(down_s=5)  # every open database connection is cut
    t0 = time.time()
    done = wait(handle, timeout=1500)
    assert done.state == "Completed", stack["procs"].log("worker-gpu")[-4000:]
    rows = stack["pg"].query(f"select state_type from flow_run where id = '{handle.flow_run_id}'")
    assert rows == [["COMPLETED"]]
    _check_outputs(run_dir, config)
    print(f"run completed {time.time() - t0:.0f}s after the database restart")


def test_a_worker_killed_mid_run_frees_its_slot_and_the_rerun_completes(stack, tmp_path):
    """SIGKILL the gpu worker and its flow-run process while a model-holding task holds the machine's model
    slot: the slot frees itself within its lease, the zombie run is marked Crashed once its heartbeats stop
    (deployments/automations.yaml), and the same config submitted again completes, reusing what was done."""
    from prefect.client.orchestration import get_client

    from stt.client import run, submit
    from tasks.model_slot import SLOT_LEASE_SECONDS, model_slot_name

    def held() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(model_slot_name()).active_slots

    run_dir = tmp_path / "worker-kill"
    config = RunConfig.model_validate({**TINY, "name": "svc-worker-kill", "run_dir": str(run_dir)})
    handle = submit("self-translate-train/demo", config=config)
    _until(lambda: _state(handle.flow_run_id) == "RUNNING" and held() > 0, 900, "a task holding the model slot",
           poll=0.5)
    stack["procs"].kill("worker-gpu")
    killed_at = time.time()
    _until(lambda: held() == 0, SLOT_LEASE_SECONDS + 60, "the model slot to be released")
    freed_s = time.time() - killed_at
    assert freed_s <= SLOT_LEASE_SECONDS + 30
    _until(lambda: _state(handle.flow_run_id) == "CRASHED", 30 + 90 + 60, "the zombie run to be marked Crashed")
    crashed_s = time.time() - killed_at
    stack["start_worker"]("gpu")
    rerun = run("self-translate-train/demo", config=config, timeout=1500)
    assert rerun.state == "Completed", stack["procs"].log("worker-gpu")[-4000:]
    _check_outputs(run_dir, config)
    print(f"worker killed: slot free after {freed_s:.0f}s, run Crashed after {crashed_s:.0f}s")


def test_docker_compose_file_validates(tmp_path):
    compose = subprocess.run(["docker-compose", "--env-file", ".env.example", "config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    if compose.returncode == 127 or "not found" in compose.stderr:
        pytest.fail("docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
    assert compose.returncode == 0, compose.stderr
    import yaml

    services = yaml.safe_load(compose.stdout)["services"]
    assert {"postgres", "prefect-server", "worker-gpu", "worker-cpu"} <= set(services)
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["prefect-server"]
    (tmp_path / "empty.env").write_text("")
    missing = subprocess.run(["docker-compose", "--env-file", str(tmp_path / "empty.env"), "config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set it in .env" in missing.stderr  # secrets are never defaulted
