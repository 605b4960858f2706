"""The committed deployment files carry the production settings; only the test stack shortens them.

The full tier's service stack (tests/services/conftest.py) deploys a copy of the zombie automation with a
shorter window, polls workers every second and leases the model slot for less time. What users deploy must
keep the production values: a 90 s zombie window over 30 s heartbeats, workers at Prefect's default polling,
a 60 s model-slot lease. And docker-compose.yml must validate, secrets never defaulted.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from .services.stack import ROOT


def test_the_zombie_automation_waits_three_heartbeats():
    [automation] = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())["automations"]
    assert automation["trigger"]["within"] == 90
    assert "90 s" in automation["actions"][0]["message"]
    deployments = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert 'env: {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "30"}' in deployments
    assert "PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30" in (ROOT / "scripts" / "worker.sh").read_text()
    deploy = (ROOT / "scripts" / "deploy.sh").read_text()
    assert "${STT_AUTOMATIONS_FILE:-deployments/automations.yaml}" in deploy


def test_deployed_runs_hold_their_models_in_a_supervised_engine_process():
    """On a worker a call stuck in native code must end at its job's timeout: only a killed process ends it."""
    from stt.config import RunConfig

    definitions = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["definitions"]
    for name in ("demo_config", "fanout_config"):
        # Said in the deployment itself, not left to the default (which a later change could flip).
        assert definitions[name]["engine"]["process"] == "child", name
        assert RunConfig.model_validate(definitions[name]).engine.process == "child", name


def test_workers_poll_and_lease_at_the_defaults():
    text = (ROOT / "scripts" / "worker.sh").read_text() + (ROOT / "docker-compose.yml").read_text()
    assert "PREFECT_WORKER_QUERY_SECONDS" not in text  # Prefect's default: every 10 s
    from stt_app.tasks.model_slot import SLOT_LEASE_SECONDS

    assert SLOT_LEASE_SECONDS == 60


def test_docker_compose_file_validates(tmp_path):
    compose = subprocess.run(["docker-compose", "--env-file", ".env.example", "config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    if compose.returncode == 127 or "not found" in compose.stderr:
        pytest.fail("docker-compose is not installed (Debian package docker-compose; scripts/system-deps.sh)")
    assert compose.returncode == 0, compose.stderr
    services = yaml.safe_load(compose.stdout)["services"]
    assert {"postgres", "prefect-server", "worker-gpu", "worker-cpu"} <= set(services)
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["prefect-server"]
    assert services["worker-gpu"]["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    (tmp_path / "empty.env").write_text("")
    missing = subprocess.run(["docker-compose", "--env-file", str(tmp_path / "empty.env"), "config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set it in .env" in missing.stderr  # secrets are never defaulted


def test_deployed_demo_arms_share_one_step_budget():
    """Issue 21's matched arms: every adapter the deployed demo compares trains for the same optimizer steps."""
    from stt.config import RunConfig

    definitions = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["definitions"]
    for name in ("demo_config", "fanout_config"):
        config = RunConfig.model_validate(definitions[name])
        assert config.train.max_steps == 4, name
        assert config.controls.equal_steps is False, name


def test_every_deployments_parameters_pass_the_servers_check_of_its_flows_schema():
    """The server refuses a deployment whose parameters do not validate against its flow's parameter schema
    (HTTP 422 at `prefect deploy`). The demo's engine names no kind: under a JSON-schema `oneOf` of the engine
    kinds it matched all four and was refused, which only the full tier's service stack had shown."""
    import importlib

    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    checked = 0
    for deployment in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        schema = parameter_schema(flow.fn).model_dump()
        parameters = deployment.get("parameters") or {}
        validate(parameters, schema, raise_on_error=True, preprocess=True, ignore_required=True)
        checked += bool(parameters)
    assert checked >= 3
    # The check itself can fail: another kind's setting on a llama.cpp engine is refused.
    from stt_app.flows.self_translate_train import self_translate_train

    schema = parameter_schema(self_translate_train.fn).model_dump()
    with pytest.raises(ValidationError, match="config.engine"):
        validate({"config": {"name": "x", "tasks": ["gsm8k"], "engine": {"kind": "llama-cpp", "concurrency": 3}}},
                 schema, raise_on_error=True, preprocess=True, ignore_required=True)
