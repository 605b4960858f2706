"""A whole run on object storage (run_dir: s3://...) against a real S3 server (SeaweedFS), by workers that share
nothing but the bucket (each its own working directory, HOME and mirror): it equals the same run on a local
disk bit for bit, and a second worker finds every job done and reads the same files from the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from stt.files import file_sha256

from .machine import machine_home
from .object_store import s3_server
from .services.stack import VENV_BIN
from .test_kill_resume import CONFIG

pytestmark = [pytest.mark.model, pytest.mark.full, pytest.mark.timeout(3600)]


def _stt_run(cwd: Path, run_dir: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    machine_home(cwd / "home")  # the installed model, as a machine's image holds it; no run data
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STT_"))}
    full_env.update({"HOME": str(cwd / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env})
    return subprocess.run([str(VENV_BIN / "stt"), "run", "--config", str(config), "--no-prefect", "--run-dir",
                           run_dir], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=1500)


# Files that record the machine, not the result: the training's wall time (and the checkpoint a resumed training
# started from, checked on its own), and peft's adapter config, which names the worker's own copy of the base
# model and lists the target modules in set order (hash-seeded).
MACHINE = {"metrics.json": ("seconds", "seconds_per_step", "step_seconds", "peak_memory_gb", "resumed_from"),
           "adapter_config.json": ("base_model_name_or_path",)}


def _content(path: Path) -> object:
    if path.name not in MACHINE:
        return file_sha256(path)
    data = json.loads(path.read_text())
    for field in MACHINE[path.name]:
        data.pop(field, None)
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    return data


def _vouched(root: Path) -> dict[str, object]:
    """Every file a marker vouches for, relative to the run folder: its checksum as found on disk (for the two
    machine-recording files, their content less the machine's fields)."""
    out = {}
    for marker in root.rglob("_manifest.json"):
        info = json.loads(marker.read_text())
        names = list(info.get("files", {}))
        names += [e[f] for e in info.get("shards", {}).values() for f in ("file", "rejects_file") if e.get(f)]
        for name in names:
            path = marker.parent / name
            out[str(path.relative_to(root))] = _content(path)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("store-run")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    with s3_server(base / "s3") as server:
        url = server.url()
        first = _stt_run(base / "worker-a", url, config, server.env())
        assert first.returncode == 0, first.stderr[-3000:]
        second = _stt_run(base / "worker-b", url, config, server.env())
        assert second.returncode == 0, second.stderr[-3000:]
        # Another run: its worker is SIGKILLed after fine-tuning's third step (checkpoints 1 and 2 complete, the
        # third not saved); a worker on another "machine" (its own folder and HOME) takes over from the store.
        moved = server.url()
        killed = _stt_run(base / "worker-c", moved, config,
                          {**server.env(), "STT_KILL_AT": "finetune:english:step:3", "STT_PROGRESS_S": "1"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        takeover = _stt_run(base / "worker-d", moved, config, server.env())
        assert takeover.returncode == 0, takeover.stderr[-3000:]
        import fsspec

        os.environ.update(server.env())
        try:
            fs, path = fsspec.core.url_to_fs(url)
            listing = sorted(p[len(path):] for p in fs.find(path))
            fs.invalidate_cache()
            _, moved_path = fsspec.core.url_to_fs(moved)
            moved_listing = sorted(p[len(moved_path):] for p in fs.find(moved_path))
        finally:
            for k in server.env():
                os.environ.pop(k, None)
    local = _stt_run(base / "local", str(base / "local" / "run"), config, {})
    assert local.returncode == 0, local.stderr[-3000:]
    mirror = lambda w: next((base / w / ".stt-mirror" / "s3").glob("*/*"))  # noqa: E731
    return {"a": mirror("worker-a"), "b": mirror("worker-b"), "d": mirror("worker-d"), "local": base / "local" / "run",
            "first": first, "second": second, "takeover": takeover, "listing": listing,
            "moved_listing": moved_listing}


def test_the_run_on_s3_equals_the_run_on_local_disk_bit_for_bit(runs):
    on_s3, local = _vouched(runs["a"]), _vouched(runs["local"])
    # 2 shards, 2 sets, 2 adapters, 3 evaluations and the quality check, as counted by hand from CONFIG.
    assert sum(n.endswith("adapter_model.safetensors") for n in local) == 2
    assert sum("/eval/" in n and n.endswith("predictions.parquet") for n in local) == 3
    assert on_s3 == local


def test_a_second_worker_reads_every_job_from_the_store(runs):
    assert "loaded gemma3-270m" in runs["first"].stderr
    assert "loaded gemma3-270m" not in runs["second"].stderr  # no model: every job's unit was claimed
    assert _vouched(runs["b"]) == _vouched(runs["a"])
    assert (runs["b"] / "results.parquet").read_bytes() == (runs["a"] / "results.parquet").read_bytes()


def test_the_store_holds_one_claim_per_unit_and_only_claimed_uploads(runs):
    claims = [p for p in runs["listing"] if "/_units/" in p]
    units = {p.rsplit("/", 1)[0] for p in claims}
    assert len(claims) == len(units)  # one key per unit: nothing done twice
    # translate: the plan and 2 shards; quality 1; sets 2; adapters 2; evaluations 3.
    assert len(claims) == 3 + 1 + 2 + 2 + 3
    objects = {p.split("/_objects/")[1].split("/")[0] for p in runs["listing"] if "/_objects/" in p}
    assert len(objects) == len(claims)  # every upload is a claimed attempt's: none left behind
    assert "/report.md" in runs["listing"] and "/results.parquet" in runs["listing"]


def test_fine_tuning_killed_on_one_worker_resumes_on_another_from_the_store(runs):
    """The killed worker published its complete checkpoints while training; the other pulled them and resumed
    (not from step 0), and every output equals the uninterrupted local run's, adapters bit for bit."""
    log = runs["takeover"].stderr
    assert "of its progress under this key pulled from the store" in log
    assert "resuming from" in log and "/checkpoint-2" in log
    metrics = json.loads((runs["d"] / "gsm8k/adapters/english/metrics.json").read_text())
    assert metrics["resumed_from"].endswith("/checkpoint-2")
    # Once the adapter was published its progress was deleted from the store; the adapter's claim is there.
    assert [p for p in runs["moved_listing"] if "/_units/progress-" in p] == []
    assert [p for p in runs["moved_listing"] if p.startswith("/gsm8k/adapters/english/_units/folder/")]
    assert _vouched(runs["d"]) == _vouched(runs["local"])
