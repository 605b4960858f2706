"""Security review, as tests: no unpickling, no remote code, no secrets in outputs or logs, no writes
outside the run folder."""

import http.server
import importlib
import json
import logging
import re
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from stt.config import RunConfig
from stt.engine_settings import OpenAISettings
from stt.errors import ConfigError

ROOT = Path(__file__).parents[1]
SCANNED = ("stt", "stt_app", "scripts", "benchmarks")  # every folder of the project's own code
SOURCES = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
# What would unpickle data (arbitrary code) if it read a file from shared storage.
UNSAFE = [r"\bimport pickle\b", r"\bpickle\.loads?\(", r"\bcloudpickle\b", r"\bimport dill\b", r"joblib\.load\(",
          r"read_pickle\(", r"allow_pickle\s*=\s*True", r"trust_remote_code\s*=\s*True"]


def _unsafe_lines(text: str) -> list[str]:
    found = [line for line in text.splitlines() if any(re.search(p, line) for p in UNSAFE)]
    # torch.load must say weights_only=True (tensors only, no pickled objects).
    found += [m.group(0) for m in re.finditer(r"torch\.load\([^)]*\)", text) if "weights_only=True" not in m.group(0)]
    return found


def test_the_scanner_catches_each_unsafe_call():
    planted = ["import pickle", "x = pickle.load(f)", "torch.load(path)", "np.load(p, allow_pickle=True)",
               "AutoModel.from_pretrained(p, trust_remote_code=True)", "pd.read_pickle(p)"]
    assert all(_unsafe_lines(line) for line in planted)
    assert not _unsafe_lines("torch.load(path, weights_only=True)\njson.load(f)")


def test_no_source_file_unpickles_or_runs_remote_code():
    # Each scanned folder exists and is scanned (a renamed folder would silently drop out of the scan), and
    # no Python file of the project outside tests/ is left out.
    for folder in SCANNED:
        assert any(p.is_relative_to(ROOT / folder) for p in SOURCES), folder
    import subprocess

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the list of tracked files is git's")
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    tracked = {ROOT / line for line in listed.stdout.split() if not line.startswith("tests/")}
    assert tracked and tracked - set(SOURCES) == set()
    offenders = {str(p.relative_to(ROOT)): _unsafe_lines(p.read_text()) for p in SOURCES
                 if p.name != "test_security.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_persisted_prefect_result_is_json():
    from prefect import Flow, Task

    checked = 0
    for module in ("stt_app.tasks.jobs", "stt_app.tasks.report", "stt_app.flows.translate",
                   "stt_app.flows.stages", "stt_app.flows.evaluate", "stt_app.flows.self_translate_train",
                   "stt_app.flows.check_data", "stt_app.flows.run_jobs"):
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, Task | Flow) and obj.persist_result:
                assert str(obj.result_serializer) == "json", f"{module}.{obj.name}: {obj.result_serializer}"
                checked += 1
    assert checked >= 10


def test_endpoint_credentials_never_go_into_a_config():
    with pytest.raises(ValidationError, match="STT_OPENAI_API_KEY"):
        OpenAISettings(base_urls=("http://user:hunter22@vllm:8000/v1",))
    from stt.engine_settings import KINDS

    assert len(KINDS) == 4
    for settings in KINDS.values():  # no kind has a field a key could be written to
        assert "key" not in settings.model_fields and "api_key" not in settings.model_fields


class _Echo(http.server.BaseHTTPRequestHandler):
    """An endpoint that fails, echoing the Authorization header it got in its error body."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        auth = self.headers.get("Authorization", "")
        _Echo.seen.append(auth)
        body = json.dumps({"error": f"bad request from {auth}"}).encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_endpoint_key_is_sent_but_never_logged_or_saved(monkeypatch, caplog, tmp_path):
    from stt.engines import Request
    from stt.engines.openai_engine import EndpointError, OpenAIEngine
    from stt.models import resolve_model

    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("STT_OPENAI_API_KEY", secret)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = OpenAISettings(base_urls=(f"http://127.0.0.1:{server.server_port}/v1",),
                              served_model="m", max_retries=0)
        engine = OpenAIEngine(resolve_model("gemma3-270m"), config)
        with caplog.at_level(logging.DEBUG), pytest.raises(EndpointError) as failure:
            engine.generate([Request("Hello", 4, ("\n",))])
        logging.getLogger("stt.test").warning("the endpoint said: %s", failure.value)
    finally:
        server.shutdown()
    assert _Echo.seen == [f"Bearer {secret}"]  # the server got the key
    assert secret not in str(failure.value) and "***" in str(failure.value)
    assert all(secret not in r.getMessage() for r in caplog.records) and caplog.records
    run = RunConfig(engine=config, run_dir=tmp_path / "run")
    assert secret not in run.model_dump_json()


def test_log_records_mask_database_urls_and_auth_strings(monkeypatch, caplog):
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:s3cret-pass")
    with caplog.at_level(logging.INFO):
        logging.getLogger("stt.test").info("db %s, auth %s", "postgresql+asyncpg://prefect:pg-pass-9@db:5432/prefect",
                                           "admin:s3cret-pass")
    message = caplog.records[-1].getMessage()
    assert "pg-pass-9" not in message and "s3cret-pass" not in message
    assert message == "db postgresql+asyncpg://prefect:***@db:5432/prefect, auth ***"


def test_outputs_cannot_escape_the_run_folder(tmp_path):
    from stt.pipeline import plan_task

    for bad in ({"name": "../elsewhere"}, {"name": "a/b"}, {"languages": ("../../etc",)}, {"languages": ("de/x",)}):
        with pytest.raises(ValidationError):
            RunConfig(**bad)
    config = RunConfig(run_dir=tmp_path / "run", languages=("de",))
    plan_task(config, "gsm8k")  # a plain folder: fine
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run" / "gsm8k").mkdir(parents=True)
    (tmp_path / "run" / "gsm8k" / "sets").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the run folder"):
        plan_task(config, "gsm8k")


def test_endpoint_errors_are_redacted_whatever_builds_them(monkeypatch):
    """The retry path built EndpointError from a URL and a reason without redacting; the adapter-loading
    ConfigError quoted the server's response text."""
    from stt.engines.openai_engine import EndpointError

    monkeypatch.setenv("STT_OPENAI_API_KEY", "sk-live-5678-abcd")
    error = EndpointError("https://bob:hunter22@gpu-host/v1/completions failed 3 times, last: key sk-live-5678-abcd")
    assert str(error) == "https://bob:***@gpu-host/v1/completions failed 3 times, last: key ***"


def test_a_traceback_in_the_log_is_redacted_along_its_whole_chain(monkeypatch):
    import sys

    from stt.secrets import install_log_redaction

    # Built at run time: a traceback also quotes the source line that raised, and that must not hold them.
    key, password = "sk-live-" + "5678-abcd", "hunter" + "22"
    monkeypatch.setenv("STT_OPENAI_API_KEY", key)
    install_log_redaction()
    try:
        try:
            raise ConnectionError(f"https://bob:{password}@gpu-host/v1 refused the key {key}")
        except ConnectionError as cause:
            raise RuntimeError(f"the endpoint failed ({key})") from cause
    except RuntimeError:
        record = logging.getLogger("stt.test").makeRecord("stt.test", logging.ERROR, __file__, 1, "call failed",
                                                          (), sys.exc_info())
    text = logging.Formatter().format(record)
    assert password not in text and key not in text
    assert "https://bob:***@gpu-host/v1 refused the key ***" in text and "the endpoint failed (***)" in text


def test_a_prefect_tasks_failure_state_holds_no_secret(prefect_server, monkeypatch):
    """Prefect builds a failed task run's state message from the exception (shown in the UI and the flow's
    error); every task body of the application runs under `scrubbed()`."""
    import ast

    from prefect import task

    from stt.secrets import scrubbed

    monkeypatch.setenv("STT_OPENAI_API_KEY", "sk-live-5678-abcd")

    @task(retries=0)
    def failing() -> None:
        with scrubbed():
            raise RuntimeError("the endpoint refused sk-live-5678-abcd")

    state = failing(return_state=True)
    assert state.is_failed() and "the endpoint refused ***" in state.message
    assert "sk-live-5678-abcd" not in state.message

    # Each @task function of stt_app holds a `with scrubbed()` (its whole model work inside).
    unscrubbed = []
    for path in sorted((ROOT / "stt_app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_task = isinstance(node, ast.FunctionDef) and any("task" in ast.unparse(d).split("(")[0]
                                                                for d in node.decorator_list)
            if is_task and "scrubbed()" not in ast.unparse(node):
                unscrubbed.append(f"{path.name}:{node.name}")
    assert unscrubbed == []
