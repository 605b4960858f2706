"""Token counting and chat templates from the model's own tokenizer, for engines that run elsewhere.

The served or subprocess model and the local `model` setting name the same weights, so the local
tokenizer counts exactly what the server will see (used to size max_new_tokens per segment).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from stt.files import file_sha256, write_json_atomic, write_text_atomic
from stt.models import ResolvedModel, cache_dir, hf_folder

log = logging.getLogger(__name__)

_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".onnx")
# What a tokenizer's own class sets in Python beside its backend (the tokenizers library's object: vocabulary,
# normalizer, pre- and post-processing, added tokens), which the copy holds whole.
_SETTINGS = ("padding_side", "truncation_side", "model_max_length", "model_input_names", "chat_template",
             "clean_up_tokenization_spaces", "split_special_tokens",
             "bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "sep_token", "cls_token")
# In the copy's name: a change to what a copy holds (above) makes new copies, never reads an old one.
_COPY_FORMAT = "stt-tokenizer-copy-v2"
# Files of a model folder that do not make its tokenizer: weights, and stt's own record (absolute paths).
_NOT_TOKENIZER = ("stt_model.json",)
_PROBES = ("Hallo Welt, wie geht's?\n  12 + 3 = 15 ☃ 日本語 <eos>", "<start_of_turn>user\nhi<end_of_turn>", "")


@functools.cache
def _tokenizer(folder: str) -> Any:
    """The model's tokenizer, read once per process.

    Through AutoTokenizer, Gemma 3's takes 3-7 s: transformers parses its 33 MB tokenizer.json in Python three
    times and rebuilds the backend from the vocabulary. So the first read keeps a copy (cache_dir()/tokenizers,
    named by the tokenizer files' content and the library versions) that later processes load straight into
    the tokenizers library: 1.2 s against 3.4 s here (benchmarks/tokenizer_load.py). A copy is kept only when
    it is the same tokenizer (see `_keep_copy`); otherwise every read goes through the model's own class."""
    copy_dir = cache_dir() / "tokenizers" / _copy_name(Path(folder))
    if (copy_dir / "settings.json").is_file():
        try:
            return _from_copy(copy_dir)
        except Exception as exc:  # noqa: BLE001 - a damaged copy: read the model's own files, keep a new copy
            log.warning("tokenizer copy %s unreadable (%s); reading %s again", copy_dir, exc, folder)
            shutil.rmtree(copy_dir, ignore_errors=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        _keep_copy(tokenizer, copy_dir)
    except Exception as exc:  # noqa: BLE001 - the copy only saves time: a read-only or full cache, or anything else
        log.warning("could not keep a copy of the tokenizer of %s in %s: %s", folder, copy_dir, exc)
    return tokenizer


def _copy_name(folder: Path) -> str:
    import tokenizers
    import transformers

    digest = hashlib.sha256(f"{_COPY_FORMAT} transformers {transformers.__version__} tokenizers "
                            f"{tokenizers.__version__}\n".encode())
    for path in sorted(folder.rglob("*")):  # subfolders too: e.g. additional_chat_templates/
        if path.is_file() and not path.name.endswith(_WEIGHTS) and path.name not in _NOT_TOKENIZER:
            digest.update(f"{path.relative_to(folder)} {file_sha256(path)}\n".encode())
    return digest.hexdigest()[:24]


def _from_copy(copy_dir: Path) -> Any:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    settings = json.loads((copy_dir / "settings.json").read_text())
    return TokenizersBackend(tokenizer_file=str(copy_dir / "tokenizer.json"), **settings)


def _keep_copy(tokenizer: Any, copy_dir: Path) -> bool:
    """Keep a copy of `tokenizer` only if it is the same tokenizer: its class adds nothing in Python but how
    it is built (no method of its own besides `__init__`), and the copy, read back, has the same backend,
    settings, special tokens, ids and decodings on probes. Returns whether a copy was kept."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if not isinstance(tokenizer, TokenizersBackend):
        return False
    mro = type(tokenizer).__mro__
    own = sorted({name for cls in mro[: mro.index(TokenizersBackend)] for name, value in vars(cls).items()
                  if callable(value) and not isinstance(value, type) and name != "__init__"})
    if own:
        log.info("tokenizer %s has methods of its own (%s): read through its class every time",
                 type(tokenizer).__name__, ", ".join(own))
        return False
    tmp = copy_dir.with_name(f".{copy_dir.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # a flow's threads
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_text_atomic(tmp / "tokenizer.json", tokenizer.backend_tokenizer.to_str())
        write_json_atomic(tmp / "settings.json", {k: str(v) if k.endswith("_token") else v for k in _SETTINGS
                                                  if (v := getattr(tokenizer, k, None)) is not None})
        if not same_tokenizer(tokenizer, _from_copy(tmp)):
            log.info("tokenizer %s: its copy differs; read through its class every time", type(tokenizer).__name__)
            return False
        if copy_dir.is_dir() and not (copy_dir / "settings.json").is_file():
            shutil.rmtree(copy_dir, ignore_errors=True)  # left half-removed by a killed process: in the way
        with contextlib.suppress(OSError):  # another process kept its copy first
            os.rename(tmp, copy_dir)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers are the same in everything stt uses: backend, settings, special tokens, and
    the ids, masks and decodings they give probes, alone and padded together."""
    if a.backend_tokenizer.to_str() != b.backend_tokenizer.to_str():
        return False
    if any(getattr(a, k, None) != getattr(b, k, None) for k in (*_SETTINGS, "all_special_ids", "added_tokens_decoder")):
        return False
    for text in _PROBES:
        for special in (True, False):
            ea, eb = a(text, add_special_tokens=special), b(text, add_special_tokens=special)
            if dict(ea) != dict(eb) or a.decode(ea["input_ids"]) != b.decode(eb["input_ids"]):
                return False
    return dict(a(list(_PROBES), padding=True)) == dict(b(list(_PROBES), padding=True))


def own_tokenizer(folder: str) -> Any:
    """A tokenizer of the model in `folder` whose settings (padding side, pad token) are the caller's own.

    Reading a tokenizer takes seconds (Gemma 3's: 262k vocabulary entries, 6k added tokens), and every
    fine-tuning job and engine load needs one: the vocabulary is read once per process and shared; the
    copy gets its own attribute containers, so one user's `padding_side` or `pad_token` never reaches
    another. (The backend's padding state is set from these attributes on every call.)"""
    shared = _tokenizer(str(folder))
    mine = copy.copy(shared)
    mine.__dict__.update({k: copy.copy(v) for k, v in vars(shared).items() if isinstance(v, (dict, list, set))})
    return mine


SPLIT_VERSION = "whole-minus-context-v1"


def split_continuation(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], int]:
    """The one definition of a scored continuation, shared by every engine.

    The whole text `context + continuation` is tokenised once (with the model's BOS); the context's
    tokens are the longest prefix it shares with the tokenisation of the context alone, and every
    token after them is the continuation (lm-evaluation-harness's split). Returns (whole ids, number
    of context tokens). A merge across the boundary moves the merged token to the continuation.
    """
    whole = tokenizer(context + continuation)["input_ids"]
    alone = tokenizer(context)["input_ids"]
    n = 0
    while n < min(len(whole), len(alone)) and whole[n] == alone[n]:
        n += 1
    if n >= len(whole):
        raise ValueError(f"continuation {continuation!r} adds no tokens after its context")
    return whole, max(n, 1)  # the first token (BOS) is always context: something must predict token 1


class TokenizerMethods:
    """Token counting and chat templates for any engine with a Hugging Face `tokenizer`."""

    tokenizer: Any

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        return split_continuation(self.tokenizer, context, continuation)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class LocalTokenizer(TokenizerMethods):
    """For engines whose model runs elsewhere: the tokenizer of the same weights, loaded here."""

    resolved: ResolvedModel

    @property
    def tokenizer(self) -> Any:
        return _tokenizer(str(hf_folder(self.resolved)))
