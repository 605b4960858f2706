"""An engine loaded in this process, by kind. Used by `stt.engines.get_engine` and by the engine process
(stt.engines.child), which imports this module and not the package above it."""

from __future__ import annotations

import importlib

from stt.config import GenerationParams
from stt.engine_settings import EngineConfig
from stt.engines.base import Engine
from stt.models import resolve_model


def load_inline(config: EngineConfig, generation: GenerationParams) -> Engine:
    """The engine of `config.kind`, loaded in this process (a child engine's process calls this too)."""
    module, cls = config.engine_class.split(":")
    return getattr(importlib.import_module(module), cls)(resolve_model(config.model), config, generation)


def give_memory_back() -> None:
    """Free what a finished model job let go of and hand it back to the operating system.

    glibc keeps freed heap for reuse by the process, so after a fine-tuning job (model, activations,
    optimizer) the process stayed about 2 GB larger for good and each job added to it: the demo peaked
    at 9.3 GB. `malloc_trim` returns those pages (measured: 2.7 GB -> 0.8 GB after a demo adapter).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:  # glibc only; elsewhere a no-op
        trim(0)
