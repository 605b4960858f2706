"""Engine over OpenAI-compatible `/v1/completions` endpoints (`vllm serve`, llama.cpp's server, ...).

Same interface as the other engines: a list of requests in, one completion per request out, in order,
with token counts taken from the responses' `usage`. Requests go round-robin over the endpoints with
a bounded number in flight; 429, 5xx, timeouts and refused connections are retried with exponential
backoff, so a server restarting mid-run costs time, not the run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import tenacity

from stt.config import GenerationParams
from stt.engine_settings import OpenAISettings
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score, first_stop
from stt.engines.tokenizer import LocalTokenizer
from stt.errors import ConfigError
from stt.models import ResolvedModel
from stt.secrets import endpoint_key, redact

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def _headers() -> dict[str, str]:
    key = endpoint_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


class EndpointError(RuntimeError):
    """An endpoint kept failing after every retry. Its message is redacted whatever built it (URLs with
    credentials, a server's echo of the key)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class _Retryable(Exception):  # noqa: N818 - a reason to try again, not an error the user sees
    """A try that may succeed on the next: overload (429), a server error, a timeout, a lost connection."""

    def __init__(self, url: str, why: str):
        super().__init__(why)
        self.url, self.why = url, why


def base_urls(config: OpenAISettings) -> list[str]:
    urls = list(config.base_urls) or [u.strip() for u in os.environ.get("STT_OPENAI_BASE_URLS", "").split(",")
                                      if u.strip()]
    if not urls:
        raise ConfigError("engine 'openai' needs an endpoint: set engine.base_urls or STT_OPENAI_BASE_URLS "
                          "(e.g. http://127.0.0.1:8000/v1 from `vllm serve <model>`)")
    return [u.rstrip("/") for u in urls]


class OpenAIEngine(LocalTokenizer):
    def __init__(self, model: ResolvedModel, config: OpenAISettings, generation: GenerationParams | None = None):
        self.resolved = model
        self.model_id = model.model_id
        self.weights_sha256 = model.weights_sha256  # the weights the server is told to serve (see README)
        self.config = config
        self.generation = generation or GenerationParams()
        self.urls = base_urls(config)
        self.stats = EngineStats()
        self.retries = 0  # requests that needed another attempt (tests read it)
        self._rr = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self.served_model = config.served_model or self._first_model()
        # Absolute: the server resolves it (docker-compose mounts the runs volume at the same path).
        self.adapter = str(Path(config.adapter).resolve()) if config.adapter else None
        if self.adapter:
            self._ensure_adapter()

    # -- the interface ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        t0 = time.perf_counter()
        results = asyncio.run(self._all([self._body(r) for r in requests], progress))
        out = []
        for r, data in zip(requests, results, strict=True):
            choice = data["choices"][0]
            text = choice.get("text") or ""
            cut = first_stop(text, r.stop)
            if cut >= 0:  # servers that honour `stop` never return it; the rest are cut here
                text = text[:cut]
            usage = data.get("usage") or {}
            out.append(Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                                  "length" if choice.get("finish_reason") == "length" else "stop"))
        self._count(len(out), sum(c.prompt_tokens for c in out), sum(c.completion_tokens for c in out), t0)
        return out

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        """Scores from `echo` + `logprobs` with no new tokens (vLLM's completions endpoint supports it)."""
        t0 = time.perf_counter()
        # The adapter's name when there is one: the same server may serve the base model under another name.
        bodies = [{"model": self.adapter_name or self.served_model, "prompt": c + x, "max_tokens": 1, "echo": True,
                   "logprobs": 1, "temperature": 0.0} for c, x in pairs]
        results = asyncio.run(self._all(bodies, progress))
        scores = []
        for (context, continuation), data in zip(pairs, results, strict=True):
            lp = data["choices"][0].get("logprobs") or {}
            offsets, token_lps, tops = lp.get("text_offset"), lp.get("token_logprobs"), lp.get("top_logprobs")
            if not offsets or token_lps is None:
                raise EndpointError("the endpoint returned no prompt logprobs (echo + logprobs): use vllm serve")
            # The shared split (stt.engines.tokenizer): the server tokenises the same text with the same
            # tokenizer, so the continuation is its last `len(whole) - n` prompt tokens. After them come the
            # generated tokens: one, or none when the model ended at once (llama-cpp-python lists no end
            # token); `usage` counts them. Assuming one shifted every score by a token whenever a model,
            # e.g. under a LoRA adapter, ended right after the continuation.
            whole, n = self.split_pair(context, continuation)
            generated = (data.get("usage") or {}).get("completion_tokens")
            prompt_len = len(token_lps) - (1 if generated is None else min(int(generated), 1))
            idx = list(range(prompt_len - (len(whole) - n), prompt_len))
            total = sum(token_lps[i] for i in idx)
            greedy = all(tops and tops[i] and max(tops[i].values()) <= token_lps[i] + 1e-6 for i in idx)
            scores.append(Score(float(total), len(idx), bool(greedy)))
        self._count(len(scores), 0, 0, t0)
        return scores

    # -- transport ----------------------------------------------------------------------------------
    def _body(self, r: Request) -> dict[str, Any]:
        g = self.generation
        body: dict[str, Any] = {"model": self.adapter_name or self.served_model, "prompt": r.prompt,
                                "max_tokens": r.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                                "seed": g.seed}
        if r.stop:
            body["stop"] = list(r.stop)
        return body

    @property
    def adapter_name(self) -> str | None:
        """The name the server knows the adapter by: folder name + weights hash (unique across runs)."""
        if not self.adapter:
            return None
        from stt.files import file_sha256

        digest = file_sha256(Path(self.adapter) / "adapter_model.safetensors")[:10]
        return f"{Path(self.adapter).name}-{digest}"

    def _ensure_adapter(self) -> None:
        """Load the adapter into the server by name unless it is there (`vllm serve --enable-lora` with
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; the path must be the same on the server, e.g. a shared volume)."""
        name = self.adapter_name
        for url in self.urls:
            listing = httpx.get(f"{url}/models", timeout=30, headers=_headers()).json()
            models = {m["id"] for m in listing.get("data", [])}
            if name in models:
                continue
            r = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": name, "lora_path": self.adapter},
                           timeout=300, headers=_headers())
            if r.status_code >= 400:
                raise ConfigError(redact(
                    f"{url} cannot load LoRA adapter {self.adapter} ({r.status_code}: {r.text[:200]}): start "
                    f"`vllm serve --enable-lora` with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or pass "
                    f"--lora-modules {name}={self.adapter}"))

    def _first_model(self) -> str:
        last: Exception | None = None
        for url in self.urls:
            try:
                r = httpx.get(f"{url}/models", timeout=30, headers=_headers())
                r.raise_for_status()
                return r.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                last = exc
        raise ConfigError(redact(f"no OpenAI-compatible endpoint answers at {', '.join(self.urls)} ({last}); "
                                 "start `vllm serve <model>` or set engine.base_urls"))

    async def _all(self, bodies: list[dict[str, Any]], progress: ProgressFn | None) -> list[dict[str, Any]]:
        sem = asyncio.Semaphore(self.config.concurrency)
        done = 0
        limits = httpx.Limits(max_connections=self.config.concurrency)
        async with httpx.AsyncClient(timeout=self.config.timeout_s, limits=limits, headers=_headers()) as client:
            async def one(body: dict[str, Any]) -> dict[str, Any]:
                nonlocal done
                async with sem:
                    data = await self._post(client, body)
                done += 1
                if progress:
                    progress(done, len(bodies))
                return data

            return await asyncio.gather(*(one(b) for b in bodies))

    async def _post(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        """One request, retried on overload, server errors, timeouts and lost connections (exponential waits
        from 0.5 s with jitter, at most 30 s; config.max_retries), each try at the next server."""
        tries = self.config.max_retries + 1
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(tries),
            wait=tenacity.wait_exponential(multiplier=0.5, max=30) + tenacity.wait_random(0, 0.25),
            retry=tenacity.retry_if_exception_type(_Retryable), before_sleep=self._before_retry)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post_once(client, body)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            raise EndpointError(f"{last.url}/completions failed {tries} times, last: {last.why}") from None
        raise AssertionError("unreachable")

    async def _post_once(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            url = self.urls[next(self._rr)]
        try:
            r = await client.post(f"{url}/completions", json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(url, f"{type(exc).__name__}: {exc}") from exc
        if r.status_code in RETRY_STATUS:
            raise _Retryable(url, f"HTTP {r.status_code}")
        if r.status_code >= 400:
            raise EndpointError(redact(f"{url}/completions answered {r.status_code}: {r.text[:300]}"))
        return r.json()

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        failed = state.outcome.exception() if state.outcome else None
        log.warning("%s/completions: %s; retry %d/%d in %.1fs", getattr(failed, "url", "?"),
                    redact(getattr(failed, "why", str(failed))), state.attempt_number, self.config.max_retries,
                    state.upcoming_sleep)

    def _count(self, n: int, prompt_tokens: int, completion_tokens: int, t0: float) -> None:
        self.stats.calls += 1
        self.stats.requests += n
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.seconds += time.perf_counter() - t0
