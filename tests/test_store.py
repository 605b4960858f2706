"""A run's object store (stt.store) against a real S3 server (SeaweedFS): claims are exactly-once under a race,
a half-published unit is invisible, a shared folder's units merge into one manifest, and a store that cannot
be used fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stt import shards
from stt.store import RunStore, StoreError, Unit

from .object_store import s3_server
from .services.stack import ROOT, free_port


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        yield server
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _worker(tmp_path: Path, url: str, name: str) -> RunStore:
    """A worker's view of the run: its own mirror folder, nothing shared but the bucket."""
    return RunStore(url, tmp_path / name / "mirror")


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_two_workers_racing_on_one_job_leave_one_result_and_the_same_bits(s3, tmp_path):
    url = s3.url()
    a, b = _worker(tmp_path, url, "a"), _worker(tmp_path, url, "b")
    fa, fb = a.root / "gsm8k/adapters/english", b.root / "gsm8k/adapters/english"
    # Each did the job; their outputs differ (as on GPUs without determinism).
    _write(fa, {"adapter.bin": b"weights of worker a", "_manifest.json": b'{"key": "k1", "by": "a"}'})
    _write(fb, {"adapter.bin": b"weights of worker b", "_manifest.json": b'{"key": "k1", "by": "b"}'})
    unit = Unit("folder", ("adapter.bin", "_manifest.json"))
    first, won_a = a.publish(fa, unit, "k1", {"by": "a"})
    second, won_b = b.publish(fb, unit, "k1", {"by": "b"})
    assert (won_a, won_b) == (True, False)
    assert second["record"] == {"by": "a"} and second["attempt"] == first["attempt"]
    # The loser now holds the winner's bits, and its own upload is gone from the store: one result.
    assert (fb / "adapter.bin").read_bytes() == b"weights of worker a"
    assert json.loads((fb / "_manifest.json").read_text())["by"] == "a"
    a.fs.invalidate_cache()
    left = a.fs.find(f"{a.remote(fa)}/_objects")
    assert sorted(p.rsplit("/_objects/", 1)[1] for p in left) == [f"{first['attempt']}/_manifest.json",
                                                                   f"{first['attempt']}/adapter.bin"]
    # A third worker with an empty mirror reads the same result.
    c = _worker(tmp_path, url, "c")
    assert c.pull([c.root / "gsm8k/adapters/english"]) == 2
    assert (c.root / "gsm8k/adapters/english/adapter.bin").read_bytes() == b"weights of worker a"



def test_two_workers_claiming_at_the_same_moment_leave_one_result(s3, tmp_path):
    """The same race with both claims sent at once (threads behind a barrier), five times: each time exactly
    one claim is created and both workers end with its bits."""
    import threading

    url = s3.url()
    workers = {w: _worker(tmp_path, url, w) for w in "ab"}
    unit = Unit("folder", ("adapter.bin",))
    for round_ in range(5):
        key, barrier, out = f"k{round_}", threading.Barrier(2), {}
        folders = {w: rs.root / f"gsm8k/adapters/round-{round_}" for w, rs in workers.items()}

        def race(w: str, key: str = key, barrier: threading.Barrier = barrier, out: dict = out,
                 folders: dict = folders) -> None:
            _write(folders[w], {"adapter.bin": f"weights of {w}".encode()})
            barrier.wait()
            out[w] = workers[w].publish(folders[w], unit, key, {"by": w})

        threads = [threading.Thread(target=race, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won for _, won in out.values()) == [False, True], out
        [winner] = [w for w, (_, won) in out.items() if won]
        assert {w: (f / "adapter.bin").read_bytes() for w, f in folders.items()} == {
            "a": f"weights of {winner}".encode(), "b": f"weights of {winner}".encode()}



def test_a_claim_whose_answer_was_lost_is_kept_not_taken_for_another_workers(s3, tmp_path, monkeypatch):
    """The create succeeds on the store but its answer is lost (a dropped connection): the retried create meets
    the claim. It is this attempt's own: the unit stays published, its objects are not deleted."""
    url = s3.url()
    a = _worker(tmp_path, url, "a")
    folder = a.root / "gsm8k/sets/english"
    _write(folder, {"data.parquet": b"the rows"})
    create, calls = RunStore._create, []

    def lossy(self, path, body):
        calls.append(path)
        create(self, path, body)
        if len(calls) == 1:
            raise ConnectionError("connection reset after the request was sent")

    monkeypatch.setattr(RunStore, "_create", lossy)
    claim, won = a.publish(folder, Unit("folder", ("data.parquet",)), "k1", {})
    assert won and len(calls) == 2  # retried once, and the second create found the first
    reader = _worker(tmp_path, url, "reader")
    assert reader.pull([reader.root / "gsm8k/sets/english"]) == 1
    assert (reader.root / "gsm8k/sets/english/data.parquet").read_bytes() == b"the rows"


def test_a_unit_uploaded_but_not_claimed_is_invisible(s3, tmp_path, monkeypatch):
    url = s3.url()
    a = _worker(tmp_path, url, "a")
    folder = a.root / "gsm8k/eval/base-de"
    _write(folder, {"predictions.parquet": b"rows", "_manifest.json": b"{}"})

    def killed(path: str, body: bytes) -> None:  # the worker dies between its uploads and its claim
        raise KeyboardInterrupt

    monkeypatch.setattr(a, "_create", killed)
    with pytest.raises(KeyboardInterrupt):
        a.publish(folder, Unit("folder", ("predictions.parquet", "_manifest.json")), "k1", {})
    assert a.fs.find(f"{a.remote(folder)}/_objects")  # the files are up...
    reader = _worker(tmp_path, url, "reader")
    assert reader.claimed(reader.root / "gsm8k/eval/base-de", "folder", "k1") is None  # ...but not done
    assert reader.pull([reader.root / "gsm8k/eval/base-de"]) == 0
    assert not (reader.root / "gsm8k/eval/base-de").exists()


def test_a_shared_folders_units_merge_into_one_manifest(s3, tmp_path):
    """Translation's shards share a folder: its plan and each shard are units; a reader's manifest has the
    plan's top-level fields and every published shard's entry, the latest claim per shard."""
    url = s3.url()
    a, b = _worker(tmp_path, url, "a"), _worker(tmp_path, url, "b")
    ta, tb = a.root / "gsm8k/translate", b.root / "gsm8k/translate"
    _write(ta, {"_input/shard-00000.parquet": b"in0", "_config.json": b"{}"})
    a.publish(ta, Unit("plan", ("_input/shard-00000.parquet", "_config.json"),
                       merge={"top": {"plan": ["de-00000", "th-00000"], "task": "gsm8k"}}), "p1", {})
    _write(ta, {"de-00000.parquet": b"de rows"})
    a.publish(ta, Unit("de-00000", ("de-00000.parquet",), merge={"shard": "de-00000", "entry": {"rows": 3}}),
              "s-de", {})
    _write(tb, {"th-00000.parquet": b"th rows"})
    b.publish(tb, Unit("th-00000", ("th-00000.parquet",), merge={"shard": "th-00000", "entry": {"rows": 5}}),
              "s-th", {})
    reader = _worker(tmp_path, url, "reader")
    folder = reader.root / "gsm8k/translate"
    assert reader.pull([folder]) == 4
    manifest = shards.read_manifest(folder)
    assert manifest["plan"] == ["de-00000", "th-00000"] and manifest["task"] == "gsm8k"
    assert manifest["shards"] == {"de-00000": {"rows": 3}, "th-00000": {"rows": 5}}
    assert (folder / "th-00000.parquet").read_bytes() == b"th rows"
    assert (folder / "_input/shard-00000.parquet").read_bytes() == b"in0"


_PROBE = """
import sys
from pathlib import Path
from stt.store import RunStore, StoreError
try:
    RunStore(sys.argv[1], Path("mirror"), attempts=2).check()
except StoreError as exc:
    print("error:", exc)
    sys.exit(2)
print("ok")
"""


def _probe(url: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, url], env={"PATH": os.environ["PATH"], "HOME": str(cwd),
                          "PYTHONPATH": str(ROOT), **env}, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_missing_credentials_and_an_unreachable_store_fail_in_one_line(s3, tmp_path):
    url = s3.url()
    env = s3.env()
    assert _probe(url, env, tmp_path).stdout.strip() == "ok"
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    out = _probe(url, no_keys, tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout.strip() == (f"error: no credentials for {url}: set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or ~/.aws/credentials) in the worker's "
                                  "environment")
    nowhere = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
               "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    out = _probe(url, nowhere, tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: the store cannot be reached"), out.stdout
    assert "retrying" in out.stderr  # retried before giving up


def test_a_wrong_secret_is_named_as_such(s3, tmp_path):
    url = s3.url()
    out = _probe(url, {**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, tmp_path)
    assert out.returncode == 2
    assert out.stdout.startswith(f"error: {url}: access denied"), out.stdout
    assert "not-the-secret" not in out.stdout + out.stderr  # never in the logs


def test_a_damaged_object_is_refused_not_adopted(s3, tmp_path):
    url = s3.url()
    a = _worker(tmp_path, url, "a")
    folder = a.root / "gsm8k/sets/english"
    _write(folder, {"data.parquet": b"the rows", "_manifest.json": b"{}"})
    claim, _ = a.publish(folder, Unit("folder", ("data.parquet", "_manifest.json")), "k1", {})
    a.fs.pipe_file(f"{a.remote(folder)}/{claim['objects']['data.parquet']}", b"other rows")
    reader = _worker(tmp_path, url, "reader")
    with pytest.raises(StoreError, match="checksum differs from its claim"):
        reader.pull([reader.root / "gsm8k/sets/english"])
    assert not (reader.root / "gsm8k/sets/english/data.parquet").exists()


def test_prefect_results_go_to_the_bucket_through_an_s3bucket_block(s3, prefect_server, data_dir):
    """`stt result-storage s3://...` saves an S3Bucket block holding no secret; a flow run with
    PREFECT_DEFAULT_RESULT_STORAGE_BLOCK naming it persists its result in the bucket, where a run on another
    machine reads it."""
    from prefect.blocks.core import Block
    from prefect.settings import PREFECT_DEFAULT_RESULT_STORAGE_BLOCK, temporary_settings
    from typer.testing import CliRunner

    from stt_app.cli import app
    from stt_app.flows.check_data import check_data

    url = s3.url()
    out = CliRunner().invoke(app, ["result-storage", url, "--name", "stt-results-test"])
    assert out.exit_code == 0, out.output
    assert "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK=s3-bucket/stt-results-test" in out.output
    block = Block.load("s3-bucket/stt-results-test")
    assert (block.bucket_name, block.bucket_folder) == tuple(url.removeprefix("s3://").split("/", 1))
    creds = block.credentials
    assert (creds.aws_access_key_id, creds.aws_secret_access_key, creds.profile_name) == (None, None, None)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    with temporary_settings({PREFECT_DEFAULT_RESULT_STORAGE_BLOCK: "s3-bucket/stt-results-test"}):
        state = check_data(data_dir=str(data_dir), return_state=True)
    assert state.is_completed()
    objects = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]
    assert len(objects) == 1  # the flow's result record, and nothing else
    stored = json.loads(s3.client().get_object(Bucket=bucket, Key=objects[0]["Key"])["Body"].read())
    assert stored == state.result() and stored["data_dir"] == str(data_dir)  # the flow's JSON result
    bad = CliRunner().invoke(app, ["result-storage", "gs://bucket/runs"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1] == (
        "error: result storage must be an s3:// URL (s3://bucket/prefix), not 'gs://bucket/runs'")



def test_a_model_on_the_store_is_fetched_once_per_worker_and_keeps_its_url_as_its_id(s3, tmp_path, monkeypatch):
    """engine.model may be a URL on the store: each worker downloads it once into its cache; its id (in every
    stage key) is the URL and its checksum the weights' own, on every worker alike."""
    import fsspec

    from stt.errors import ConfigError
    from stt.files import file_sha256
    from stt.models import SHORT_NAMES, resolve_model

    weights = SHORT_NAMES["gemma3-270m"].locate()
    url = f"{s3.url()}/models/{weights.name}"
    fs, path = fsspec.core.url_to_fs(url)
    fs.put_file(str(weights), path)
    monkeypatch.setenv("STT_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve_model(url)
    assert model.model_id == url and model.is_gguf
    assert model.path.is_relative_to(tmp_path / "cache") and model.weights_sha256 == file_sha256(weights)
    mtime = model.path.stat().st_mtime_ns
    again = resolve_model(url)  # the same object: not fetched again
    assert again.path == model.path and again.path.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"no such object or folder on the store"):
        resolve_model(f"{s3.url()}/models/none.gguf")



_CREDS_PROBE = """
import sys
from pathlib import Path
from stt.errors import SttError
from stt.store import RunStore
from stt_app.tasks.store_blocks import use_store_credentials
try:
    use_store_credentials(sys.argv[2])
    RunStore(sys.argv[1], Path("mirror"), attempts=1).check()
except SttError as exc:
    print("error:", exc)
    sys.exit(2)
print("ok")
"""


def test_the_stores_credentials_can_come_from_a_prefect_block(s3, prefect_server, tmp_path):
    """config store_credentials names an AwsCredentials block: a worker with no AWS settings of its own reaches
    the store through it, and the secret is never printed."""
    from prefect.settings import PREFECT_API_URL
    from prefect_aws import AwsCredentials

    from .object_store import KEY, SECRET

    AwsCredentials(aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1",
                   aws_client_parameters={"endpoint_url": s3.endpoint}).save("stt-store-test", overwrite=True)
    url = s3.url()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": os.environ["PREFECT_HOME"],
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}

    def probe(block: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _CREDS_PROBE, url, block], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    without = probe("")  # no block, no AWS settings: the store cannot be used
    assert without.returncode == 2 and without.stdout.startswith(f"error: no credentials for {url}"), without.stdout
    through = probe("aws-credentials/stt-store-test")
    assert through.stdout.strip() == "ok", through.stdout + through.stderr[-2000:]
    assert SECRET not in through.stdout + through.stderr
    unknown = probe("no-such-block")
    assert unknown.returncode == 2 and unknown.stdout.startswith(
        "error: store_credentials: no AwsCredentials block named 'no-such-block'"), unknown.stdout


_JOB = """
import sys
from pathlib import Path
from stt.store import RunStore, StoreError, Unit
url, mirror, action, folder = sys.argv[1:5]
rs = RunStore(url, Path(mirror))
try:
    if action == "publish":  # a job's outputs are in its mirror folder: publish them as its unit
        rs.publish(rs.root / folder, Unit("folder", ("data.parquet", "_manifest.json")), folder.replace("/", "-"), {})
    else:
        rs.pull([rs.root / f for f in folder.split(",")])
except StoreError as exc:
    print("error:", exc)
    sys.exit(2)
print("ok")
"""


@pytest.mark.full  # a fault trial of the full tier (the store stopped and started again)
def test_a_store_down_mid_run_fails_the_job_in_one_line_and_nothing_is_lost(s3, tmp_path):
    """The store goes down between two jobs of a run: the second job's publish is retried, then fails in one
    line; its outputs stay in the worker's mirror; once the store is back (the same server restarted on its
    data) the same job publishes, and another worker reads both jobs' bits. Last in the file: it stops the
    module's server."""
    server = s3
    url = server.url()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **server.env(),
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}

    def job(mirror: str, action: str, folders: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _JOB, url, mirror, action, folders], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    outputs = {f: {"data.parquet": f"rows of {f}".encode(), "_manifest.json": b"{}"}
               for f in ("gsm8k/sets/english", "gsm8k/sets/stt")}
    for f, files in outputs.items():
        _write(tmp_path / "a" / f, files)
    assert job("a", "publish", "gsm8k/sets/english").stdout.strip() == "ok"
    server.stop()
    down = job("a", "publish", "gsm8k/sets/stt")
    assert down.returncode == 2, down.stderr[-2000:]
    lines = down.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: the store cannot be reached"), lines
    assert lines[0].endswith("nothing published is lost: rerun the same config to resume")
    assert "retrying" in down.stderr
    for f, files in outputs.items():  # nothing in the worker's mirror was touched
        assert {n: (tmp_path / "a" / f / n).read_bytes() for n in files} == files
    server.start()
    assert job("a", "publish", "gsm8k/sets/stt").stdout.strip() == "ok"
    assert job("b", "pull", ",".join(outputs)).stdout.strip() == "ok"
    for f, files in outputs.items():
        assert {n: (tmp_path / "b" / f / n).read_bytes() for n in files} == files
