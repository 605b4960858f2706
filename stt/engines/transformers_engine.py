"""CPU (or single-GPU) engine on Hugging Face transformers: batched, greedy by default.

Batches are built from length-sorted prompts with left padding. When every prompt of a call shares
a long prefix (the few-shot demonstrations of one language), the prefix's KV cache is computed
once and reused by every batch: on the CPU that prefill is most of the cost of a short segment.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from stt.config import GenerationParams
from stt.engine_settings import TransformersSettings, merges_adapter, resolved_dtype
from stt.engines.base import Completion, EngineStats, ProgressFn, Request, Score, first_stop
from stt.engines.tokenizer import TokenizerMethods
from stt.models import ResolvedModel, hf_folder

log = logging.getLogger(__name__)

# Below this many shared tokens a prefix cache costs more (cache copies) than it saves.
MIN_PREFIX_TOKENS = 64


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class TransformersEngine(TokenizerMethods):
    def __init__(self, model: ResolvedModel, config: TransformersSettings, generation: GenerationParams | None = None,
                 merge_adapter: bool | None = None):
        """`merge_adapter`: fold a LoRA adapter into the weights (None: where merges_adapter says so)."""
        from transformers import AutoModelForCausalLM
        from transformers.utils.logging import disable_progress_bar

        from stt.engines.tokenizer import own_tokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_id = model.model_id
        self.weights_sha256 = model.weights_sha256
        self.config = config
        self.generation = generation or GenerationParams()
        self.stats = EngineStats()
        self.lock = threading.Lock()  # one generate at a time per loaded model
        self.device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = resolved_dtype(config.dtype, self.device)
        dtype = getattr(torch, dtype_name)
        folder: Path = hf_folder(model)
        t0 = time.perf_counter()
        self.tokenizer = own_tokenizer(folder)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        disable_progress_bar()  # a bar for loading local tensors in a fraction of a second: noise in the log
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        self.adapter = str(config.adapter) if config.adapter else None
        if self.adapter:
            import warnings

            from peft import PeftModel

            # peft reads an attribute transformers 5 deprecates (a FutureWarning per adapter that nobody here
            # can act on).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.model = PeftModel.from_pretrained(self.model, self.adapter).eval()
            if merges_adapter(dtype_name) if merge_adapter is None else merge_adapter:
                # W + scale * B @ A once, in this engine's own copy of the weights (the adapter's files stay as
                # they are): no LoRA matmuls beside every projection, 1.15x XNLI items/s on the CPU.
                self.model = self.model.merge_and_unload()
            self.model_id = f"{self.model_id}+{self.adapter}"
        self.batch_size = config.batch_size
        self._prefix_cache: tuple[str, list[int], object] | None = None
        log.info("loaded %s from %s on %s in %.1fs", self.model_id, folder, self.device, time.perf_counter() - t0)

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[Completion]:
        with self.lock:
            t0 = time.perf_counter()
            results = self._generate_locked(list(requests), progress)
            self.stats.calls += 1
            self.stats.requests += len(requests)
            self.stats.prompt_tokens += sum(c.prompt_tokens for c in results)
            self.stats.completion_tokens += sum(c.completion_tokens for c in results)
            self.stats.seconds += time.perf_counter() - t0
            return results

    def _generate_locked(self, requests: list[Request], progress: ProgressFn | None) -> list[Completion]:
        if not requests:
            return []
        prefix_text, prefix_ids = self._shared_prefix([r.prompt for r in requests])
        encoded = [self._encode(r.prompt, prefix_text) for r in requests]
        return self._batched(
            [len(e) for e in encoded],
            lambda idx: self._generate_batch([requests[i] for i in idx], [encoded[i] for i in idx], prefix_ids),
            progress,
        )

    def _batched(self, lengths: list[int], run: Callable[[list[int]], list], progress: ProgressFn | None) -> list:
        """Run `run` on batches of indices, longest first; halve the batch size on out-of-memory."""
        # Longest first: similar lengths share a batch (less padding), and an OOM shows up at once.
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        results: list = [None] * len(lengths)
        pos = 0
        while pos < len(order):
            idx = order[pos : pos + self.batch_size]
            try:
                outs = run(idx)
            except RuntimeError as exc:
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.stats.oom_backoffs += 1
                log.warning("out of memory at batch size %d; retrying at %d", len(idx), self.batch_size)
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
            self.stats.batch_sizes.append(len(idx))
            pos += len(idx)
            if progress:
                progress(pos, len(lengths))
        return results

    # -- scoring -------------------------------------------------------------------------------
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: ProgressFn | None = None) -> list[Score]:
        """Sum of log-probabilities of each continuation given its context (NLI label scoring).

        Pairs that share a context share one forward pass: the sequence is the context plus the longest
        continuation but its last token, and every continuation whose tokens follow that path (all
        one-token ones, and the longest itself) is read from its logits. The three NLI labels of an item
        cost one pass instead of three.
        """
        with self.lock:
            t0 = time.perf_counter()
            units: list[tuple[list[int], list[int]]] = []  # (context ids, extension ids) per forward pass
            where: list[tuple[int, list[int]]] = []  # per pair: (unit, continuation ids)
            by_context: dict[tuple[int, ...], list[int]] = {}
            split = [self.split_pair(c, x) for c, x in pairs]
            for k, (whole, n) in enumerate(split):
                by_context.setdefault(tuple(whole[:n]), []).append(k)
            for ctx, members in by_context.items():
                conts = {k: split[k][0][split[k][1] :] for k in members}
                longest = max(conts.values(), key=len)
                unit = len(units)
                units.append((list(ctx), longest[:-1]))
                for cont in conts.values():
                    if cont[:-1] == longest[: len(cont) - 1]:
                        where.append((unit, cont))
                    else:  # a continuation off the shared path gets its own pass
                        units.append((list(ctx), cont[:-1]))
                        where.append((len(units) - 1, cont))
            order = {k: i for i, k in enumerate(k for members in by_context.values() for k in members)}
            unit_logprobs = self._batched([len(c) + len(e) for c, e in units],
                                          lambda idx: self._unit_logprobs([units[i] for i in idx]), progress)
            scores = []
            for k in range(len(pairs)):
                unit, cont = where[order[k]]
                rows = unit_logprobs[unit][: len(cont)]  # row j predicts continuation token j
                target = torch.tensor(cont)
                picked = rows.gather(-1, target[:, None])
                scores.append(Score(float(picked.sum()), len(cont), bool((rows.argmax(-1) == target).all())))
            self.stats.calls += 1
            self.stats.requests += len(pairs)
            self.stats.seconds += time.perf_counter() - t0
            return scores

    def _unit_logprobs(self, batch: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """Log-probabilities at the last context position and every extension position, per unit."""
        pad = self.tokenizer.pad_token_id
        seqs = [c + e for c, e in batch]
        width = max(len(s) for s in seqs)
        keep = max(len(e) for _, e in batch) + 1
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        # Left padding: positions must count real tokens only, or padded rows would score differently.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            # Only the last `keep` positions' logits: a 262k vocabulary makes full logits huge. Named by index,
            # not by count: an index gathers a contiguous copy, which torch folds into one matrix product for
            # the output layer; the strided slice a count makes goes to a batched product against a 262k x 640
            # weight expanded per row whenever the weights are frozen (an adapter's model), 1.9x as slow on the
            # CPU (benchmarks/RESULTS.md, "XNLI label scoring with an adapter").
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device),
                                logits_to_keep=self._kept_positions(width, keep)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        # Row r ends at kept index keep-1; its context's last position is len(extension) before that.
        return [logprobs[row, keep - 1 - len(e) :] for row, (_, e) in enumerate(batch)]

    def _kept_positions(self, width: int, keep: int) -> torch.Tensor:
        return torch.arange(width - keep, width, device=self.device)

    def _encode(self, prompt: str, prefix_text: str) -> list[int]:
        """Token ids of the prompt after the shared prefix (all of it when there is none)."""
        if prefix_text:
            return self.tokenizer(prompt[len(prefix_text) :], add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    def _shared_prefix(self, prompts: list[str]) -> tuple[str, list[int] | None]:
        """The longest common prefix of all prompts, cut after a newline so tokens split cleanly there."""
        if not self.config.reuse_prefix_cache or len(prompts) < 2:
            return "", None
        common = os.path.commonprefix(prompts)
        cut = common.rfind("\n")
        if cut < 0:
            return "", None
        prefix = common[: cut + 1]
        ids = self.tokenizer(prefix)["input_ids"]
        if len(ids) < MIN_PREFIX_TOKENS:
            return "", None
        if self._prefix_cache is None or self._prefix_cache[0] != prefix:
            with torch.inference_mode():
                from transformers import DynamicCache

                cache = DynamicCache(config=self.model.config)
                out = self.model(torch.tensor([ids], device=self.device), use_cache=True,
                                 **{self._cache_kwarg(): cache})
            self._prefix_cache = (prefix, ids, out.past_key_values)
        return prefix, ids

    def _cache_kwarg(self) -> str:
        # transformers renamed `past_key_values` to `cache` (5.2x); older 5.x releases reject the new name.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # peft wraps it
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def _generate_batch(
        self, requests: list[Request], encoded: list[list[int]], prefix_ids: list[int] | None
    ) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        width = max(len(e) for e in encoded)
        n = len(encoded)
        # Left padding inside the suffix: [prefix | pads | suffix]; masked pads keep positions right.
        suffix = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                suffix[row, width - len(ids) :] = torch.tensor(ids)
                mask[row, width - len(ids) :] = 1
        kwargs: dict = {}
        if prefix_ids is not None:
            assert self._prefix_cache is not None
            cache = copy.deepcopy(self._prefix_cache[2])
            cache.batch_repeat_interleave(n)
            kwargs[self._cache_kwarg()] = cache
            input_ids = torch.cat([torch.tensor([prefix_ids] * n), suffix], dim=1)
            attention = torch.cat([torch.ones((n, len(prefix_ids)), dtype=torch.long), mask], dim=1)
        else:
            input_ids, attention = suffix, mask
        max_new = max(r.max_new_tokens for r in requests)
        stops = sorted({s for r in requests for s in r.stop})
        gen = self.generation
        sampling = (
            {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p}
            if gen.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if gen.temperature > 0:
            torch.manual_seed(gen.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max_new,
                stop_strings=stops or None,
                tokenizer=self.tokenizer,
                pad_token_id=pad,
                **sampling,
                **kwargs,
            )
        generated = out[:, input_ids.shape[1] :].tolist()
        eos = self._eos_ids()
        results = []
        for row, req in enumerate(requests):
            toks = generated[row][: req.max_new_tokens]
            # generate pads finished rows; the first EOS (or pad, when pad == eos) ends the row.
            end = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
            toks = toks[:end]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            cut = first_stop(text, req.stop)
            stopped = cut >= 0 or (bool(toks) and toks[-1] in eos)
            if cut >= 0:
                text = text[:cut]
            results.append(
                Completion(
                    text=text,
                    prompt_tokens=len(encoded[row]) + (len(prefix_ids) if prefix_ids else 0),
                    completion_tokens=len(toks),
                    finish_reason="stop" if stopped else "length",
                )
            )
        return results

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if self.tokenizer.pad_token_id is not None:
            ids.add(self.tokenizer.pad_token_id)
        return ids
