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

from stt.config import EngineConfig, RunConfig
from stt.errors import ConfigError

ROOT = Path(__file__).parents[1]
SOURCES = sorted(p for d in ("stt", "tasks", "flows", "scripts", "benchmarks") for p in (ROOT / d).rglob("*.py"))
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
    assert len(SOURCES) > 40
    offenders = {str(p.relative_to(ROOT)): _unsafe_lines(p.read_text()) for p in SOURCES
                 if p.name != "test_security.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_persisted_prefect_result_is_json():
    from prefect import Flow, Task

    checked = 0
    for module in ("stt_app.tasks.translate", "stt_app.tasks.pipeline", "stt_app.flows.translate",
                   "stt_app.flows.stages", "stt_app.flows.evaluate", "stt_app.flows.self_translate_train",
                   "stt_app.flows.check_data"):
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, Task | Flow) and obj.persist_result:
                assert str(obj.result_serializer) == "json", f"{module}.{obj.name}: {obj.result_serializer}"
                checked += 1
    assert checked >= 10


def test_endpoint_credentials_never_go_into_a_config():
    with pytest.raises(ValidationError, match="STT_OPENAI_API_KEY"):
        EngineConfig(kind="openai", base_urls=("http://user:hunter22@vllm:8000/v1",))
    assert "key" not in EngineConfig.model_fields and "api_key" not in EngineConfig.model_fields


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
        config = EngineConfig(kind="openai", base_urls=(f"http://127.0.0.1:{server.server_port}/v1",),
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
