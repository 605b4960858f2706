"""One model-holding task at a time per machine (a GPU, or the CPU, holds one model)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

# Renewed while the task lives; a killed run's slot frees itself within this time.
SLOT_LEASE_SECONDS = 60  # Prefect accepts no shorter lease


def model_slot_name() -> str:
    return os.environ.get("STT_MODEL_SLOT", f"stt-model-{socket.gethostname()}")


def ensure_model_slot(limit: int = 1) -> str:
    """Create the machine's global concurrency limit unless it exists (then the user's value stands)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = model_slot_name()
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # A stage's tasks start together: on a fresh server several find no limit and create it at
            # once. Whoever loses that race finds it made, which is all it wanted.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
    return name


@contextmanager
def model_slot() -> Iterator[None]:
    ensure_model_slot()
    with concurrency(model_slot_name(), occupy=1, lease_duration=SLOT_LEASE_SECONDS):
        yield
