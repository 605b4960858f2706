"""Trigger the deployed flows from another program: `submit` (start, return at once) or `run` (start, wait).

    from stt_app.client import run
    handle = run("self-translate-train/demo", config="configs/demo.yaml", overrides={"eval.limit": 5})
    print(handle.flow_run_id, handle.state, handle.outputs["report"])

This module talks to a Prefect server (PREFECT_API_URL), so unlike the rest of `stt` it uses
Prefect; it imports it only when called. Calling the flows as Python functions keeps working too
(`stt_app.flows.self_translate_train.self_translate_train(config)`), with no server or worker involved.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stt.config import RunConfig, load_run_config
from stt.errors import SttError

# Files each deployment leaves in the run directory, for callers that only need locations.
OUTPUTS = {"report": "report.md", "results": "results.parquet", "plot": "plot.png", "config": "config.json"}


class RunFailed(SttError):
    """The flow run ended in a state other than Completed."""


@dataclass
class RunHandle:
    flow_run_id: str
    deployment: str
    state: str  # Prefect state name: Scheduled, Running, Completed, Failed, ...
    run_dir: str | None = None
    result: Any = None  # the flow's return value, when finished and its result was persisted
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path, when finished

    @property
    def finished(self) -> bool:
        return self.state in ("Completed", "Cached")


def _parameters(config: RunConfig | str | Path | dict | None, overrides: dict[str, Any] | None,
                parameters: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(parameters or {})
    if config is not None:
        if isinstance(config, str | Path):
            config = load_run_config(Path(config), **(overrides or {}))
        elif isinstance(config, dict):
            config = RunConfig.model_validate(config)
        params["config"] = json.loads(config.model_dump_json())
    return params


def submit(deployment: str, config: RunConfig | str | Path | dict | None = None,
           overrides: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None,
           tags: list[str] | None = None) -> RunHandle:
    """Create a flow run of `deployment` ("flow-name/deployment-name") and return without waiting."""
    from prefect.deployments import run_deployment

    params = _parameters(config, overrides, parameters)
    flow_run = run_deployment(deployment, parameters=params, timeout=0, tags=tags)
    return RunHandle(str(flow_run.id), deployment, flow_run.state.name if flow_run.state else "Scheduled",
                     run_dir=_run_dir(params))


def wait(handle: RunHandle | str, timeout: float = 3600, deployment: str = "", poll: float = 3) -> RunHandle:
    """Wait for a flow run to end; fill in its result and output locations. Raises RunFailed."""
    from prefect.client.orchestration import get_client

    run_id = handle.flow_run_id if isinstance(handle, RunHandle) else handle
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(run_id)
            if flow_run.state and flow_run.state.is_final():
                break
            if time.monotonic() > deadline:
                raise RunFailed(f"flow run {run_id} still {flow_run.state.name if flow_run.state else '?'} "
                                f"after {timeout:.0f}s (it goes on; wait again or cancel it in the UI)")
            time.sleep(poll)
    params = flow_run.parameters or {}
    out = RunHandle(run_id, handle.deployment if isinstance(handle, RunHandle) else deployment,
                    flow_run.state.name if flow_run.state else "Unknown", run_dir=_run_dir(params))
    if not out.finished:
        message = flow_run.state.message if flow_run.state else ""
        raise RunFailed(f"flow run {run_id} ({out.deployment}) ended {out.state}: {message}")
    try:
        out.result = flow_run.state.result()
    except Exception:  # noqa: BLE001 - result not persisted or storage not reachable from here
        out.result = None
    if out.run_dir:
        out.outputs = {k: str(Path(out.run_dir) / v) for k, v in OUTPUTS.items() if (Path(out.run_dir) / v).exists()}
    return out


def run(deployment: str, config: RunConfig | str | Path | dict | None = None, overrides: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None, timeout: float = 3600, tags: list[str] | None = None) -> RunHandle:
    """Submit and wait: the finished run, with its result and output locations. Raises RunFailed."""
    return wait(submit(deployment, config, overrides, parameters, tags), timeout)


def _run_dir(params: dict[str, Any]) -> str | None:
    config = params.get("config")
    if not isinstance(config, dict):
        return None
    return str(RunConfig.model_validate(config).root)
