"""The transformers engine on the real Gemma 3 270M weights."""

import copy
import json

import pytest
import torch

from stt.config import GenerationParams
from stt.engine_settings import TransformersSettings
from stt.engines import Request, get_engine
from stt.prompts import build_prompt_builder

from .conftest import DATA, ENGINE_TEST_PROMPT

pytestmark = pytest.mark.model

SOURCES = ["Weng earns $12 an hour for babysitting.", "How much did she earn?",
           "Natalia sold clips to 48 of her friends in April."]


@pytest.fixture(scope="module")
def prompts():
    builder = build_prompt_builder("de", ENGINE_TEST_PROMPT, DATA)
    return [builder.completion_prompt(s) for s in SOURCES]


def test_batched_generation_with_prefix_cache_matches_plain_and_keeps_order(prompts):
    requests = [Request(p, 32, ("\n",)) for p in prompts]
    cached = get_engine(TransformersSettings(batch_size=2, reuse_prefix_cache=True)).generate(requests)
    plain = get_engine(TransformersSettings(batch_size=3, reuse_prefix_cache=False)).generate(requests)
    assert [c.text for c in cached] == [c.text for c in plain]
    for c in cached:
        assert c.text and "\n" not in c.text
        assert c.finish_reason == "stop"
        assert 0 < c.completion_tokens <= 32
        assert c.prompt_tokens > 150  # the two-shot prefix (ENGINE_TEST_PROMPT)
    assert "Weng" in cached[0].text and "verdien" in cached[0].text  # real German


def test_max_new_tokens_is_per_request(prompts):
    engine = get_engine(TransformersSettings(batch_size=3))
    out = engine.generate([Request(prompts[2], 3, ("\n",)), Request(prompts[0], 32, ("\n",))])
    assert out[0].completion_tokens == 3 and out[0].finish_reason == "length"
    assert out[1].finish_reason == "stop"


def test_oom_backs_off_batch_size(prompts, monkeypatch):
    # The engine object itself (its batch method is patched): in this process.
    engine = get_engine(TransformersSettings(batch_size=4, reuse_prefix_cache=False, device="cpu", process="inline"))
    real = engine._generate_batch

    def flaky(requests, encoded, prefix_ids):
        if len(requests) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(requests, encoded, prefix_ids)

    monkeypatch.setattr(engine, "_generate_batch", flaky)
    out = engine.generate([Request(p, 16, ("\n",)) for p in prompts])
    assert len(out) == 3 and all(c.text for c in out)
    assert engine.batch_size == 1 and engine.stats.oom_backoffs == 2


def test_max_new_tokens_derived_from_source_length():
    g = GenerationParams(max_new_tokens_ratio=2.0, max_new_tokens_extra=16, max_new_tokens_cap=100)
    assert g.max_new_tokens(10) == 36
    assert g.max_new_tokens(200) == 100


def test_first_stop_cuts_at_the_earliest_stop_string():
    from stt.engines.base import first_stop

    assert first_stop("Hallo Welt\nEnglish: x", ("English:", "\n")) == 10
    assert first_stop("no stop here", ("\n",)) == -1
    assert first_stop("an empty stop stops nothing", ("",)) == -1
    assert first_stop("", ("\n",)) == -1



def test_tokenizer_copies_share_the_vocabulary_but_not_their_settings():
    """Every fine-tuning job and engine gets its own copy of one tokenizer read per process: one copy's
    padding side or pad token must not reach another's batches."""
    from stt.engines.tokenizer import own_tokenizer
    from stt.models import hf_folder, resolve_model

    folder = str(hf_folder(resolve_model("gemma3-270m")))
    left, right = own_tokenizer(folder), own_tokenizer(folder)
    left.padding_side, right.padding_side = "left", "right"
    right.pad_token = right.eos_token
    texts = ["one", "one two three four"]
    pad_id, eos_id = left.convert_tokens_to_ids("<pad>"), left.convert_tokens_to_ids("<eos>")
    assert pad_id != eos_id
    assert left(texts, padding=True)["input_ids"][0][0] == pad_id  # padded on the left with <pad>
    assert right(texts, padding=True)["input_ids"][0][-1] == eos_id  # on the right with its own pad token
    assert own_tokenizer(folder).pad_token == "<pad>"  # a later copy starts from the model's settings
    assert left(texts, padding=True)["input_ids"][0][0] == pad_id  # and the first is still as it was


def test_the_tokenizer_read_from_its_kept_copy_equals_the_models_own(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="stt.engines.tokenizer")
    """The first read goes through AutoTokenizer (Gemma's own class) and keeps a copy; later reads load the
    copy. Both must give the same ids, masks and decodings on real text of every script the tasks use."""
    from stt.engines import tokenizer as tk
    from stt.models import hf_folder, resolve_model
    from stt.testsets import load_xnli

    folder = str(hf_folder(resolve_model("gemma3-270m")))
    monkeypatch.setenv("STT_CACHE_DIR", str(tmp_path))
    tk._tokenizer.cache_clear()
    try:
        own = tk._tokenizer(folder)
        tk._tokenizer.cache_clear()
        copied = tk._tokenizer(folder)
        assert type(own).__name__ == "GemmaTokenizer" and type(copied).__name__ == "TokenizersBackend"
        assert len(list(tmp_path.glob("tokenizers/*/tokenizer.json"))) == 1
        texts = [it[k] for lang in ("de", "th", "zh", "ru") for it in load_xnli(DATA, lang, "test")[:40]
                 for k in ("premise", "hypothesis")] + SOURCES + ["<start_of_turn>user\nHallo<end_of_turn>\n"]
        for special in (True, False):
            assert own(texts, add_special_tokens=special) == copied(texts, add_special_tokens=special)
        assert own(texts, padding=True) == copied(texts, padding=True)
        ids = own(texts)["input_ids"]
        assert [own.decode(x) for x in ids] == [copied.decode(x) for x in ids]
        # By hand, from Gemma 3's vocabulary: <pad> 0, <eos> 1, <bos> 2, padded on the left.
        assert (copied.pad_token_id, copied.eos_token_id, copied.bos_token_id) == (0, 1, 2)
        assert copied.padding_side == "left" and ids[0][0] == 2

        # A damaged copy is set aside: the next read goes through the model's own class and keeps a new copy.
        next(tmp_path.glob("tokenizers/*/settings.json")).write_text("{not json")
        tk._tokenizer.cache_clear()
        assert type(tk._tokenizer(folder)).__name__ == "GemmaTokenizer"
        assert "unreadable" in caplog.text
        assert json.loads(next(tmp_path.glob("tokenizers/*/settings.json")).read_text())["padding_side"] == "left"

        # A tokenizer class with a method of its own is never copied, even one that changes nothing (a copy
        # could not carry what such a method may do on other inputs).
        class Own(type(own)):
            def decode(self, *args, **kwargs):
                return super().decode(*args, **kwargs)

        mine = copy.copy(own)
        mine.__class__ = Own
        assert tk.same_tokenizer(own, mine)  # equal on every probe: only the class check refuses it
        assert not tk._keep_copy(mine, tmp_path / "own-class")
        assert not (tmp_path / "own-class").exists()
        assert "has methods of its own (decode)" in caplog.text
        # The comparison tells apart a tokenizer that differs in a setting, or in how it splits special tokens.
        for setting, value in (("padding_side", "right"), ("split_special_tokens", True)):
            other = copy.copy(own)
            setattr(other, setting, value)
            assert not tk.same_tokenizer(own, other), setting
    finally:
        tk._tokenizer.cache_clear()
