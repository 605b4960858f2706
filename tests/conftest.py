"""Shared test setup: offline hubs, a fixed Prefect home, one Prefect test server per session."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["PREFECT_HOME"] = str(ROOT / ".prefect-test")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from stt.config import resolve_data_dir  # noqa: E402

DATA = resolve_data_dir()
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_adapter(folder: Path, learning_rate: float) -> Path:
    """A LoRA adapter trained for one step on four arithmetic pairs: enough to move the model visibly."""
    import pyarrow as pa

    from stt.config import TrainConfig
    from stt.finetune import finetune
    from stt.shards import write_parquet_atomic
    from stt.stages import mark_done
    from stt.trainsets import SET_SCHEMA

    rows = [{"id": f"x:{i}", "source_id": f"x:{i}", "language": "en", "variant": "english",
             "prompt": f"Question: What is {i} plus {i}?\nAnswer:", "target": f" {2 * i}", "fields": "{}"}
            for i in range(4)]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=SET_SCHEMA), folder / "set" / "data.parquet")
    mark_done(folder / "set", "test-set", ["data.parquet"])
    finetune("gemma3-270m", folder / "set", folder / "adapter",
             TrainConfig(rank=4, alpha=8, max_steps=1, batch_size=4, max_length=48, learning_rate=learning_rate))
    return folder / "adapter"


def pytest_collection_modifyitems(config, items):
    """The service stacks (minutes of waiting on servers and heartbeats each) before other files: xdist
    (`-n 2 --dist loadfile`, scripts/test.sh) starts files with more tests first and, among files with as
    many tests, in this order, so a stack does not start last and run alone."""
    items.sort(key=lambda item: item.get_closest_marker("services") is None)
