import pytest

from stt.config import PromptConfig
from stt.errors import ConfigError
from stt.prompts import LANGUAGES, build_prompt_builder, load_demonstrations, strip_label

from .conftest import DATA

EXEMPLARS = DATA / "mgsm" / "mgsm_exemplars.jsonl"


@pytest.mark.parametrize("text,expected", [
    ("Question: Roger has 5 tennis balls.", "Roger has 5 tennis balls."),
    ("Question : Roger a 5 balles de tennis.", "Roger a 5 balles de tennis."),
    ("问题：罗杰有 5 个网球。", "罗杰有 5 个网球。"),
    ("問題：ロジャーは5個のテニスボールがあります。", "ロジャーは5個のテニスボールがあります。"),
    ("Step-by-Step Answer: 5 + 6 = 11. The answer is 11.", "5 + 6 = 11. The answer is 11."),
])
def test_strip_label(text, expected):
    assert strip_label(text) == expected


@pytest.mark.parametrize("lang", [c for c in LANGUAGES if c != "en"])
def test_eight_parallel_demonstrations_per_language_without_labels(lang):
    demos = load_demonstrations(EXEMPLARS, lang)
    assert len(demos) == 8
    assert demos[0].english.startswith("Roger has 5 tennis balls")
    for d in demos:
        assert ":" not in d.english[:12] and "：" not in d.target[:12], d


def test_completion_prompt_shape_and_version():
    builder = build_prompt_builder("de", PromptConfig(), DATA)
    prompt = builder.completion_prompt("A train travels 60 kilometers per hour.")
    assert prompt.count("\nGerman: ") == 8
    assert prompt.endswith("English: A train travels 60 kilometers per hour.\nGerman:")
    assert "English: Roger has 5 tennis balls." in prompt and "German: Roger hat 5 Tennisbälle." in prompt
    assert builder.version == "translate-completion-v1"
    # the shared prefix is identical for every segment of a language (engines cache it)
    assert builder.completion_prompt("x")[:-20] == builder.completion_prompt("y")[:-20]


def test_shot_count_and_chat_messages():
    builder = build_prompt_builder("th", PromptConfig(num_shots=3, style="chat"), DATA)
    messages = builder.chat_messages("Hello.")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert builder.version == "translate-chat-v1"


def test_unknown_language_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown target language 'xx'"):
        build_prompt_builder("xx", PromptConfig(), DATA)
