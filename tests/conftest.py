"""Shared test setup: offline hubs, a fixed Prefect home, one Prefect test server per session, and the tiers.

Two tiers (README, "Tests"):
- default (`bash scripts/test.sh`): every module's logic, the real model, real data, the Prefect test harness;
- full (`bash scripts/test.sh --full`): adds the tests marked `full`: the service stacks in tests/services/
  (PostgreSQL, a Prefect server, workers, server and database faults, fan-out and worker kills), all the
  kill points of the kill-and-resume trials, the fault trials that wait
  longest (hangs ended by timeouts, engine processes killed, the store stopped, a full disk), real vLLM,
  whole runs on object storage and the model-running stage-key table.
Each test has a time limit sized to its tier, so a hang fails with the test's name.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["PREFECT_HOME"] = str(ROOT / ".prefect-test")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)



def _own_share_of_the_cores() -> None:
    """Under xdist each test process (and what it starts) keeps to its own share of the cores: two processes
    each running torch and llama.cpp on every core oversubscribe a 2-core machine, and llama.cpp's threads
    spin while they wait. torch and llama.cpp size their thread pools from this affinity."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if not worker.startswith("gw") or count < 2 or len(cpus) < count:
        return
    share = cpus[int(worker[2:]) % count :: count]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))


_own_share_of_the_cores()

import pytest  # noqa: E402

from stt.config import PromptConfig, resolve_data_dir  # noqa: E402

DATA = resolve_data_dir()
# The engine tests' translation prompts: two shots (174 tokens on Gemma 3) instead of the default eight (595).
# They compare engines on the same prompts, and that prefix is still longer than any engine's minimum for
# reusing it; the prefills and the replays those tests pay for cost about a third.
ENGINE_TEST_PROMPT = PromptConfig(num_shots=2)
FIXTURES = Path(__file__).parent / "fixtures"

# Seconds one test may take (its fixtures' setup included), by tier; a `timeout` marker overrides it.
TEST_TIMEOUT_S = {"default": 420, "full": 900}


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the full tier too: service stacks, every kill point, the model stage-key table")
    parser.addoption("--full-only", action="store_true", default=False,
                     help="with --full: only the tests the default tier does not run (marked full); .ci/run "
                          "runs the default tier, then these")
    parser.addoption("--services", choices=("with", "only", "without"), default="with",
                     help="the service-stack tests: with the others (default), only them, or without them "
                          "(scripts/test.sh --full runs `only` in a process beside `without`)")


class _GroupsKept:
    """After xdist has read the groups (--dist loadgroup): stop if it did not. A lost group spreads a file's
    tests over both processes (its module fixtures built twice) and starts a second service stack."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if config.getoption("loadgroup", default=False) and items and "@" not in items[0].nodeid:
            raise pytest.UsageError("pytest-xdist did not apply the test groups (pytest-xdist#1386 with pytest "
                                    "9.2): reinstall with the pytest pinned in pyproject.toml (bash scripts/setup.sh)")


def pytest_configure(config):
    config.pluginmanager.register(_GroupsKept(), "stt-groups-kept")
    if config.getoption("--services") == "only":  # beside another pytest run: its own Prefect home
        os.environ["PREFECT_HOME"] = str(ROOT / ".prefect-test-services")


def full_tier(config) -> bool:
    return bool(config.getoption("--full"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """One LoRA adapter for the whole session, trained for one step on four arithmetic pairs at a high
    learning rate: enough to move the model visibly (the engine tests compare engines on it)."""
    return train_tiny_adapter(tmp_path_factory.mktemp("tiny-adapter"), learning_rate=0.05)


def train_tiny_adapter(folder: Path, learning_rate: float) -> Path:
    import pyarrow as pa

    from stt.config import TrainConfig
    from stt.files import write_parquet_atomic
    from stt.markers import mark_done
    from stt.stages.finetune import finetune
    from stt.trainsets import SET_SCHEMA

    rows = [{"id": f"x:{i}", "source_id": f"x:{i}", "language": "en", "variant": "english",
             "prompt": f"Question: What is {i} plus {i}?\nAnswer:", "target": f" {2 * i}", "fields": "{}"}
            for i in range(4)]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SET_SCHEMA), folder / "set" / "data.parquet")
    mark_done(folder / "set", "test-set", ["data.parquet"])
    finetune("gemma3-270m", folder / "set", folder / "adapter",
             TrainConfig(rank=4, alpha=8, max_steps=1, batch_size=4, max_length=48, learning_rate=learning_rate))
    return folder / "adapter"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    full = full_tier(config)
    if not full:
        skipped = [item for item in items if item.get_closest_marker("full")]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not item.get_closest_marker("full")]
    if config.getoption("--full-only"):  # the full tier's own tests: CI runs the default tier just before
        if not full:
            raise pytest.UsageError("--full-only goes with --full (scripts/test.sh --full-only passes both)")
        dropped = [item for item in items if not item.get_closest_marker("full")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.get_closest_marker("full")]
    services = config.getoption("--services")
    if services != "with":
        keep = services == "only"
        dropped = [item for item in items if bool(item.get_closest_marker("services")) != keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if bool(item.get_closest_marker("services")) == keep]
    limit = TEST_TIMEOUT_S["full" if full else "default"]
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))
        # xdist (--dist loadgroup): the tests of a file stay on one process (its module fixtures are built
        # once), and every service-stack test shares one process, so one server stack serves them all.
        group = "services" if item.get_closest_marker("services") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
    # Longest first (scripts/test.sh keeps this order: --no-loadscope-reorder), so the two processes end
    # together: the service stack, then the files that measured slowest, then the rest in file order.
    items.sort(key=lambda item: (item.get_closest_marker("services") is None, _cost_rank(item)))


# The slowest files, slowest first (process-seconds per file, measured in both tiers on 2 cores, 2026-11-30):
# handed out longest first, the two processes end close together.
SLOW_FIRST = ["test_vllm_engine.py", "test_kill_resume.py", "test_self_translate_train_flow.py", "test_stage_keys.py",
              "test_llamacpp_engine.py", "test_faults.py", "test_child_engine.py", "test_declared_task.py",
              "test_vllm_runner.py", "test_openai_engine.py", "test_engine.py", "test_translate_flow.py",
              "test_stage_key_table.py", "test_disk_full.py", "test_round_trip.py", "test_study_recompute.py",
              "test_translate_tasks.py", "test_cli_and_layout.py", "test_evaluate.py"]


def _cost_rank(item) -> int:
    name = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Seconds per test file (setup, call and teardown of its tests), slowest first: what a tier costs."""
    per_file: dict[str, float] = defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown") and hasattr(report, "duration"):
                per_file[report.nodeid.split("::", 1)[0]] += report.duration
    if not per_file:
        return
    terminalreporter.write_sep("=", f"seconds per test file ({'full' if full_tier(config) else 'default'} tier)")
    for name, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {name}")
    terminalreporter.write_line(f"{sum(per_file.values()):8.1f}  in all (process-seconds; wall time is less with -n 2)")


# -- engine processes (tests/test_child_engine.py, tests/test_faults.py) -------------------------------------
def engine_gone(pid: int) -> bool:
    """Ended: no such process, or a zombie (dead, waiting for a parent that may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class _HangSeen(logging.Handler):
    """Set when an engine process says (through the pipe) that it reached an STT_FAULTS hang."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.event, self.lines = threading.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        if "hangs here" in record.getMessage():
            self.lines.append(record.getMessage())
            self.event.set()


@pytest.fixture
def hang_seen():
    handler = _HangSeen()
    logger = logging.getLogger("stt.faults")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """The process ids of the engine processes started in the test, in order."""
    from stt.engines import child

    pids: list[int] = []
    start = child._Host.start

    def recorded(self):
        start(self)
        pids.append(self.process.pid)

    monkeypatch.setattr(child._Host, "start", recorded)
    return pids
