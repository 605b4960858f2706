"""One service stack for every test of the full tier that needs it: PostgreSQL, `prefect server start` on it,
`scripts/deploy.sh`, process workers. Built once per session (every service test runs in one xdist process,
tests/conftest.py), stopped and checked gone at the end.

Test-only settings shorten the waits that production settings make long, without touching what is deployed
(tests/test_production_settings.py checks the committed files still carry the production values):
- the zombie automation: deployed from a copy of deployments/automations.yaml (STT_AUTOMATIONS_FILE), window kept;
- workers poll for runs every second (PREFECT_WORKER_QUERY_SECONDS; 10 by default);
- the server's scheduler and repossessor loops.
The model slot's lease stays at 60 s: Prefect refuses a shorter one.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml

from .stack import ROOT, VENV_BIN, Postgres, Processes, free_port, pg_bin, wait_healthy

AUTH = "stt-test:not-a-secret"
# Production's window (heartbeats every 30 s, Prefect's minimum). 60 s crashed the end-to-end run when the
# server restart fell on a loaded moment (both tiers in one command); the tests that wait on it wait 60 s more.
ZOMBIE_WINDOW_S = 90


def _test_automations(folder) -> str:
    spec = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())
    for automation in spec["automations"]:
        automation["trigger"]["within"] = ZOMBIE_WINDOW_S
    path = folder / "automations.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if pg_bin() is None:
        pytest.fail("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does it)")
    folder = tmp_path_factory.mktemp("services")
    # The stack's processes (database, server, workers running models side by side) get every core, not this
    # test process's share (tests/conftest.py): they, not this process, do the work of these tests.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    os.environ.pop("OMP_NUM_THREADS", None)
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
           "PREFECT_WORKER_QUERY_SECONDS": "1",
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
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2"})
            wait_healthy(api, server)

        def start_worker(pool: str, name: str | None = None, process: str | None = None,
                         extra_env: dict[str, str] | None = None):
            """A process worker of `pool` (gpu: one flow run at a time, as scripts/worker.sh starts it)."""
            name = name or f"test-{pool}-{time.time():.0f}"
            return procs.start(process or f"worker-{pool}", [
                str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                *(["--limit", "1"] if pool == "gpu" else [])], {**env, **(extra_env or {})})

        start_server()
        deploy = subprocess.run(["bash", "scripts/deploy.sh"], cwd=ROOT, env={
            **env, "PREFECT": str(VENV_BIN / "prefect"), "STT_AUTOMATIONS_FILE": _test_automations(folder)},
            capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for pool in ("gpu", "cpu"):
            start_worker(pool, f"test-{pool}")
        # This process's Prefect client must talk to this server, even when a prefect_test_harness is active
        # in the same session: settings, not only the environment.
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
                   "deploy_output": deploy.stdout, "start_server": start_server, "start_worker": start_worker}
    finally:
        killed = procs.stop()
        pg.stop()
        assert not procs.group_alive(), f"processes left behind: {procs.group_alive()}"
        assert not pg.running(), "PostgreSQL still running"
        pg.remove()
        print(f"services stopped (needed SIGKILL: {killed or 'none'})")


@pytest.fixture(scope="session")
def silent_runs(stack):
    """Two runs made Running through the API and then left silent, as a dead worker leaves them: one tagged
    `stt` (the zombie automation must crash it), one not (it must be left alone). Made when the stack starts,
    so the automation's window passes while other tests run; checked in test_services.py."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from stt_app.flows.run_jobs import run_jobs

    with get_client(sync_client=True) as client:
        ours = client.create_flow_run(run_jobs, name="lost-before-heartbeat", tags=["stt"])
        other = client.create_flow_run(run_jobs, name="someone-elses-run", tags=["not-stt"])
        for run in (ours, other):
            client.set_flow_run_state(run.id, Running(), force=True)
    return {"ours": ours.id, "other": other.id, "since": time.time()}
