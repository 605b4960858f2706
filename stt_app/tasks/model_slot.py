"""One model-holding task at a time per machine (a GPU, or the CPU, holds one model)."""

from __future__ import annotations

import os
import socket
import threading
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
    _slot_limit(limit)
    return model_slot_name()


def _slot_limit(limit: int = 1) -> int:
    """The machine's limit, created with `limit` unless it exists."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = model_slot_name()
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            # A stage's tasks start together: on a fresh server several find no limit and create it at
            # once. Whoever loses that race finds it made, which is all it wanted.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return client.read_global_concurrency_limit_by_name(name).limit


# The tasks of one process queue here before they ask the server. The server answers a task that finds
# the slot taken "retry in N s", N up to 30 s (its average slot occupancy times the tasks waiting), so
# with ten jobs queued at the server the slot sat idle for 10-20 s after each job (the demo's evaluation
# stage lost about a quarter of its time that way). Queued here, the next job asks the moment the slot
# is given back. The server's limit still rules between processes and machines.
_gates: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_gates_lock = threading.Lock()


@contextmanager
def _process_gate(name: str, limit: int) -> Iterator[None]:
    with _gates_lock:
        gate = _gates.setdefault((name, limit), threading.BoundedSemaphore(max(limit, 1)))
    while not gate.acquire(timeout=1.0):  # a bounded wait, so that a task's timeout can still end it
        pass
    try:
        yield
    finally:
        gate.release()


@contextmanager
def model_slot() -> Iterator[None]:
    name = model_slot_name()
    with _process_gate(name, _slot_limit()), concurrency(name, occupy=1, lease_duration=SLOT_LEASE_SECONDS):
        yield
