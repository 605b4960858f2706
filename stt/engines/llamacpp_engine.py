"""CPU engine on llama.cpp (llama-cpp-python's low-level API): the GGUF weights as they ship, batched.

Why: on a CPU the model's own Q4_K_M kernels beat transformers' dequantised fp32 matmuls (issue 10,
benchmarks/RESULTS.md). The engine keeps the project's interface and tokenisation: prompts are
tokenised with the model's Hugging Face tokenizer (the same ids as every other engine, and the shared
continuation split for log-likelihoods), and the ids go to llama.cpp.

Generation is continuous batching over `batch_size` sequence slots in one unified KV cache: the
shared few-shot prefix is decoded once into sequence 0 and copied into a slot (a cell-sharing copy,
no recompute) when a request starts; every step decodes one token for each running sequence plus the
prompt tokens of the requests that join, in one `llama_decode` call; a finished sequence frees its
slot for the next request. Greedy sampling is an argmax over the logits (temperature > 0 samples with
the config's seed). Log-likelihood: each context is decoded once; a one-token continuation is scored
from the context's last logits, longer ones continue in copies of the context's sequence.

LoRA adapters (peft folders) are converted once to GGUF LoRA (stt.lora_gguf) and applied by llama.cpp at
run time, as peft applies them: on the same weights in F32 (stt.gguf_f32) the adapted per-token
log-probabilities match transformers' to mean 0.001 / max 0.03 nats, the error of llama.cpp's fp16 GELU table
and F16 KV cache, which the base model shows too (with both in fp32: 5e-6 / 1.5e-4); on Q4_K_M weights the
engines differ by their quantisation (benchmarks/lora_parity_f32.py, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stt.config import GenerationParams
from stt.engine_settings import LlamaCppSettings
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score, first_stop
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError
from stt.models import ResolvedModel

log = logging.getLogger(__name__)

# Below this many shared tokens a prefix sequence is not worth its bookkeeping.
MIN_PREFIX_TOKENS = 32

# llama.cpp's own log lines. It logs at ERROR level what is not an error for us (a LoRA tensor that cannot use
# the repacked CPU buffer, 90 lines per adapter; a token type it corrects itself), so nothing is printed: the
# last lines are kept and quoted when llama.cpp refuses a model, a context or an adapter.
_NATIVE_LOG: deque[str] = deque(maxlen=200)
_native_callback: Any = None


def _keep_native_log(L: Any) -> None:
    global _native_callback
    if _native_callback is None:
        @L.llama_log_callback
        def keep(level: int, text: bytes, user_data: Any) -> None:
            _NATIVE_LOG.append(text.decode("utf-8", "replace"))

        _native_callback = keep  # referenced for as long as llama.cpp may call it
        L.llama_log_set(keep, ctypes.c_void_p(0))


def native_log_tail(lines: int = 6) -> str:
    """The last lines llama.cpp logged, for an error message ("" when it logged nothing)."""
    tail = "".join(_NATIVE_LOG).splitlines()[-lines:]
    return ("; llama.cpp said: " + " | ".join(t.strip() for t in tail if t.strip())) if tail else ""


@dataclass
class _Running:
    index: int  # position of the request in the call
    seq: int
    pos: int  # next position to write
    max_new: int
    stop: tuple[str, ...]
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    logit_row: int = -1  # row of this sequence's logits in the last decoded batch


class LlamaCppEngine(LocalTokenizer):
    def __init__(self, model: ResolvedModel, config: LlamaCppSettings, generation: GenerationParams | None = None):
        import llama_cpp as L

        _keep_native_log(L)
        if not model.is_gguf:
            raise ConfigError(f"engine 'llama-cpp' runs GGUF weights; {model.model_id} is a Hugging Face folder "
                              "(use engine.kind 'transformers', or give the .gguf file)")
        self.L = L
        self.resolved = model
        self.model_id = model.model_id
        self.weights_sha256 = model.weights_sha256
        self.config = config
        self.generation = generation or GenerationParams()
        self.stats = EngineStats()
        self.lock = threading.Lock()
        self.slots = config.batch_size
        self.n_ctx = config.n_ctx
        threads = config.threads or len(os.sched_getaffinity(0))
        t0 = time.perf_counter()
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        self._model = L.llama_model_load_from_file(str(model.path).encode(), mparams)
        if not self._model:
            raise ConfigError(f"llama.cpp could not load {model.path}{native_log_tail()}")
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_ctx
        cparams.n_ubatch = min(512, self.n_ctx)
        cparams.n_seq_max = self.slots + 1  # slot sequences + the shared prefix (sequence 0)
        cparams.kv_unified = True  # one cache: copying the prefix into a slot shares its cells
        cparams.swa_full = True  # keep the whole prefix in sliding-window layers too (Gemma 3)
        cparams.n_threads = cparams.n_threads_batch = threads
        # Flash attention ("auto" by default) runs in f16 on the CPU: scores moved by ~0.4 nats against the
        # fp32 reference. Off: log-likelihoods agree with transformers' fp32 within ~0.05.
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ConfigError(f"llama.cpp could not create a context of {self.n_ctx} tokens for {model.path}"
                              f"{native_log_tail()}")
        self._mem = L.llama_get_memory(self._ctx)
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self._batch = L.llama_batch_init(self.n_ctx, 0, self.slots + 1)
        self._prefix: tuple[list[int], int] | None = None  # (ids in sequence 0, their count)
        self.adapter = str(config.adapter) if config.adapter else None
        self._lora = None
        if self.adapter:
            from stt.lora_gguf import adapter_gguf

            path = adapter_gguf(self.adapter, model)
            self._lora = L.llama_adapter_lora_init(self._model, str(path).encode())
            if not self._lora:
                raise ConfigError(f"llama.cpp could not load the LoRA adapter {path} (converted from {self.adapter})"
                                  f"{native_log_tail()}")
            self._set_lora()
            self.model_id = f"{self.model_id}+{self.adapter}"
        self._rng = np.random.default_rng(self.generation.seed)
        log.info("loaded %s in llama.cpp (%d threads, %d slots, n_ctx %d) in %.1fs", self.model_id, threads,
                 self.slots, self.n_ctx, time.perf_counter() - t0)

    def _set_lora(self) -> None:
        L = self.L
        if hasattr(L, "llama_set_adapters_lora"):  # llama.cpp >= b6900: the list form
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(self._lora)
            scales = (ctypes.c_float * 1)(1.0)
            rc = L.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
            if rc != 0:
                raise ConfigError(f"llama.cpp refused the LoRA adapter {self.adapter} (code {rc})")
        else:
            L.llama_set_adapter_lora(self._ctx, self._lora, 1.0)

    def __del__(self) -> None:  # free the C objects with the engine (release_engines drops it)
        try:
            self.L.llama_batch_free(self._batch)
            self.L.llama_free(self._ctx)
            self.L.llama_model_free(self._model)
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing to do
            pass

    # -- the low-level batch --------------------------------------------------------------------
    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        if len(entries) > self.n_ctx:
            raise RuntimeError(f"batch of {len(entries)} tokens exceeds n_ctx {self.n_ctx}")
        b = self._batch
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if logits else 0
        b.n_tokens = len(entries)
        rc = self.L.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (KV cache full? raise engine.n_ctx "
                               f"{self.n_ctx} or lower engine.batch_size {self.slots})")

    def _logits(self, row: int) -> np.ndarray:
        ptr = self.L.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _clear(self, seq: int) -> None:
        self.L.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def _copy_prefix(self, seq: int) -> int:
        """Give `seq` the shared prefix's cells; returns the prefix length."""
        if self._prefix is None:
            return 0
        n = self._prefix[1]
        self.L.llama_memory_seq_cp(self._mem, 0, seq, 0, n)
        return n

    def _set_prefix(self, ids: list[int] | None) -> None:
        if ids is None:
            if self._prefix is not None:
                self._clear(0)
                self._prefix = None
            return
        if self._prefix is not None and self._prefix[0] == ids:
            return
        self._clear(0)
        for start in range(0, len(ids), self.n_ctx):
            chunk = ids[start : start + self.n_ctx]
            self._decode([(t, start + k, 0, False) for k, t in enumerate(chunk)])
        self._prefix = (ids, len(ids))

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        with self.lock:
            t0 = time.perf_counter()
            out = self._generate(list(requests), progress)
            self.stats.calls += 1
            self.stats.requests += len(requests)
            self.stats.prompt_tokens += sum(c.prompt_tokens for c in out)
            self.stats.completion_tokens += sum(c.completion_tokens for c in out)
            self.stats.seconds += time.perf_counter() - t0
            return out

    def _shared_prefix(self, prompts: list[str]) -> str:
        if not self.config.reuse_prefix_cache or len(prompts) < 2:
            return ""
        common = os.path.commonprefix(prompts)
        cut = common.rfind("\n")
        return common[: cut + 1] if cut >= 0 else ""

    def _generate(self, requests: list[Request], progress: ProgressFn | None) -> list[Completion]:
        if not requests:
            return []
        prefix_text = self._shared_prefix([r.prompt for r in requests])
        prefix_ids = self.tokenizer(prefix_text)["input_ids"] if prefix_text else []
        if len(prefix_ids) < MIN_PREFIX_TOKENS:
            prefix_text, prefix_ids = "", []
        self._set_prefix(prefix_ids or None)
        if prefix_text:
            suffixes = [self.tokenizer(r.prompt[len(prefix_text) :], add_special_tokens=False)["input_ids"]
                        for r in requests]
        else:
            suffixes = [self.tokenizer(r.prompt)["input_ids"] for r in requests]
        # Longest first: the long ones do not end up alone at the tail of the call.
        queue = sorted(range(len(requests)), key=lambda i: -len(suffixes[i]))
        results: list[Completion | None] = [None] * len(requests)
        free = list(range(self.slots, 0, -1))
        running: list[_Running] = []
        eos = self._eos_ids()
        done = 0
        budget = self.n_ctx - len(prefix_ids)
        used = 0  # KV cells held by running sequences (beyond the shared prefix)
        while queue or running:
            entries: list[tuple[int, int, int, bool]] = []
            for r in running:  # one new token each
                r.logit_row = len(entries)
                entries.append((r.tokens[-1], r.pos, r.seq, True))
                r.pos += 1
            # Admit waiting requests while there is a slot, batch room and KV room for their whole output.
            while queue and free:
                i = queue[0]
                need = len(suffixes[i]) + requests[i].max_new_tokens
                if need > budget:
                    raise RuntimeError(f"request {i} needs {need + len(prefix_ids)} KV cells; engine.n_ctx is "
                                       f"{self.n_ctx}: raise it")
                if used + need > budget or len(entries) + len(suffixes[i]) > self.n_ctx:
                    break
                queue.pop(0)
                seq = free.pop()
                start = self._copy_prefix(seq)
                ids = suffixes[i] or [self.tokenizer.bos_token_id]
                entries += [(t, start + k, seq, k == len(ids) - 1) for k, t in enumerate(ids)]
                run = _Running(i, seq, start + len(ids), requests[i].max_new_tokens, requests[i].stop,
                               start + len(suffixes[i]))
                run.logit_row = len(entries) - 1
                running.append(run)
                used += need
            if not entries:
                raise RuntimeError("llama.cpp engine: nothing to decode (KV budget too small for one request)")
            self._decode(entries)
            still: list[_Running] = []
            for r in running:
                token = self._pick(self._logits(r.logit_row))
                r.tokens.append(token)
                text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
                cut = first_stop(text, r.stop)
                if token in eos or cut >= 0 or len(r.tokens) >= r.max_new:
                    stopped = token in eos or cut >= 0
                    if cut >= 0:
                        text = text[:cut]
                    results[r.index] = Completion(text, r.prompt_tokens, len(r.tokens),
                                                  "stop" if stopped else "length")
                    self._clear(r.seq)
                    free.append(r.seq)
                    used -= len(suffixes[r.index]) + requests[r.index].max_new_tokens
                    done += 1
                    if progress:
                        progress(done, len(requests))
                else:
                    still.append(r)
            running = still
            self.stats.batch_sizes.append(len(running))
        return results  # type: ignore[return-value]

    def _pick(self, logits: np.ndarray) -> int:
        gen = self.generation
        if gen.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / gen.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if gen.top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), gen.top_p)) + 1]
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        return int(self._rng.choice(len(p), p=p))

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        eot = self.L.llama_vocab_eot(self._vocab)
        ids.add(int(eot) if eot >= 0 else None)
        ids.add(int(self.L.llama_vocab_eos(self._vocab)))
        return {i for i in ids if i is not None and i >= 0}

    # -- scoring -------------------------------------------------------------------------------
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        """Sum of log-probabilities of each continuation given its context; a context shared by several
        pairs (the three NLI labels of one item) is decoded once."""
        with self.lock:
            t0 = time.perf_counter()
            self._set_prefix(None)
            split = [self.split_pair(c, x) for c, x in pairs]
            groups: dict[tuple[int, ...], list[int]] = {}
            for k, (whole, n) in enumerate(split):
                groups.setdefault(tuple(whole[:n]), []).append(k)
            scores: list[Score | None] = [None] * len(pairs)
            items = list(groups.items())
            done = 0
            for start in range(0, len(items), self.slots):
                chunk = items[start : start + self.slots]
                self._score_chunk(chunk, split, scores)
                done += sum(len(m) for _, m in chunk)
                if progress:
                    progress(done, len(pairs))
            self.stats.calls += 1
            self.stats.requests += len(pairs)
            self.stats.seconds += time.perf_counter() - t0
            return scores  # type: ignore[return-value]

    def _score_chunk(self, chunk: list[tuple[tuple[int, ...], list[int]]], split: list[tuple[list[int], int]],
                     scores: list[Score | None]) -> None:
        """Contexts decoded together, one sequence each; every continuation's first token is read from its
        context's last logits; the rest of longer ones is decoded in rounds (one per sequence per round) on
        top of the context, then removed again."""
        entries: list[tuple[int, int, int, bool]] = []
        last_rows = []
        for seq, (ctx, _) in enumerate(chunk, start=1):
            entries += [(t, p, seq, p == len(ctx) - 1) for p, t in enumerate(ctx)]
            last_rows.append(len(entries) - 1)
        self._decode(entries)
        total: dict[int, float] = {}
        greedy: dict[int, bool] = {}
        pending: list[list[int]] = []
        for (_, members), row in zip(chunk, last_rows, strict=True):
            lp = self._log_softmax(self._logits(row))
            best = int(np.argmax(lp))
            for k in members:
                first = split[k][0][split[k][1]]
                total[k], greedy[k] = float(lp[first]), best == first
            pending.append([k for k in members if len(split[k][0]) - split[k][1] > 1])
        while any(pending):
            entries, starts = [], []
            for seq, ((ctx, _), todo) in enumerate(zip(chunk, pending, strict=True), start=1):
                if not todo:
                    continue
                k = todo.pop(0)
                whole, n = split[k]
                cont = whole[n:]
                starts.append((k, seq, len(ctx), len(entries)))
                entries += [(t, len(ctx) + j, seq, True) for j, t in enumerate(cont[:-1])]
            self._decode(entries)
            for k, seq, n_ctx, row0 in starts:
                whole, n = split[k]
                for j, target in enumerate(whole[n + 1 :]):
                    lp = self._log_softmax(self._logits(row0 + j))
                    total[k] += float(lp[target])
                    greedy[k] &= int(np.argmax(lp)) == target
                self.L.llama_memory_seq_rm(self._mem, seq, n_ctx, -1)  # back to the bare context
        for seq in range(1, len(chunk) + 1):
            self._clear(seq)
        for _, members in chunk:
            for k in members:
                scores[k] = Score(total[k], len(split[k][0]) - split[k][1], greedy[k])

    @staticmethod
    def _log_softmax(logits: np.ndarray) -> np.ndarray:
        z = logits.astype(np.float64)
        m = z.max()
        return z - m - np.log(np.exp(z - m).sum())
