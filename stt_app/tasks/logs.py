"""What a person reads in a run's log.

Prefect warns on every task run with a timeout that runs in a worker thread ("Timeouts in worker threads
cannot interrupt blocking operations..."): ten times a stage, on every model job. For our model jobs the
answer is the engine's process (engine.process): a child process is ended at the job's deadline, native
hangs included; an inline engine is not. So the warning is dropped and each stage says once which holds.
"""

from __future__ import annotations

import logging

from stt.engine_settings import EngineConfig

THREAD_TIMEOUT_WARNING = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"


class _DropThreadTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(THREAD_TIMEOUT_WARNING)


def say_once_how_timeouts_end(logger: logging.Logger | logging.LoggerAdapter, engine: EngineConfig) -> None:
    """Prefect's per-task warning dropped (once per process), and this flow run's one line in its place."""
    tasks = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _DropThreadTimeoutWarning) for f in tasks.filters):
        tasks.addFilter(_DropThreadTimeoutWarning())
    logger.info("timeouts: %s", timeout_note(engine))


def timeout_note(engine: EngineConfig) -> str:
    training = ("fine-tuning runs in a child process ended at its job's timeout" if engine.process == "child" else
                "fine-tuning runs in this process (engine.process inline: a native hang there is not ended)")
    if engine.hang_note:  # an engine outside this process: its own supervision
        return f"{engine.hang_note}; {training}"
    if engine.process == "child":
        return ("model jobs run their engine, and fine-tuning, in a child process: a call that outlasts the job's "
                "timeout (counted from when it is sent) ends it, a call stuck in native code included, and the job "
                "is retried; the process dies with this one")
    return ("engine.process is inline: a model job's timeout takes effect when a call into the model returns; a "
            "call stuck in native code, in inference or in fine-tuning, is not ended (engine.process: child ends "
            "it at the deadline)")
