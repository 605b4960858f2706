"""Few-shot translation prompts: `English: ...\\n<Language>: ...` demonstration pairs.

The default demonstrations are the 8 MGSM exemplar questions: GSM8K-train problems translated by
people into every MGSM language, so they overlap no test set. Each prompt format has a version
string that is stored with every output row; change the string whenever the text changes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from stt.config import PromptConfig
from stt.errors import ConfigError, DataError

LANGUAGES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "ru": "Russian",
    "th": "Thai",
    "zh": "Chinese",
    "ja": "Japanese",
    "fr": "French",
    "es": "Spanish",
    "sw": "Swahili",
    "te": "Telugu",
    "bn": "Bengali",
}

PROMPT_VERSIONS = {"completion": "translate-completion-v1", "chat": "translate-chat-v1"}

# "Question:", "Frage:", "Question :", "问题：" ... (half- or full-width colon) at the very start.
_PREFIX = re.compile(r"^[^:：\n]{1,40}?\s*[:：]\s*")


def strip_label(text: str) -> str:
    """Drop the per-language 'Question:' / 'Step-by-Step Answer:' label of an MGSM exemplar."""
    return _PREFIX.sub("", text, count=1).strip()


def language_name(code: str) -> str:
    if code not in LANGUAGES or code == "en":
        known = ", ".join(c for c in LANGUAGES if c != "en")
        raise ConfigError(f"unknown target language '{code}': choose from {known}")
    return LANGUAGES[code]


@dataclass(frozen=True)
class Demonstration:
    english: str
    target: str


def load_demonstrations(path: Path, language: str, num_shots: int = 8) -> list[Demonstration]:
    """English/target pairs from an MGSM-exemplar-style jsonl (keys lang, index, question)."""
    if not path.is_file():
        raise DataError(f"demonstrations file not found: {path}")
    by_lang: dict[str, dict[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_lang.setdefault(row["lang"], {})[int(row["index"])] = strip_label(row["question"])
            except (json.JSONDecodeError, KeyError, ValueError) as exc:
                raise DataError(f"{path} line {lineno}: not a demonstration row ({exc})") from exc
    if language not in by_lang or "en" not in by_lang:
        raise ConfigError(f"no demonstrations for '{language}' in {path} (has: {', '.join(sorted(by_lang))})")
    shared = sorted(set(by_lang["en"]) & set(by_lang[language]))
    if len(shared) < num_shots:
        raise ConfigError(f"{path} has {len(shared)} demonstrations for '{language}', {num_shots} asked for")
    return [Demonstration(by_lang["en"][i], by_lang[language][i]) for i in shared[:num_shots]]


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the prompt for one segment of English text into one language."""

    language: str
    demonstrations: tuple[Demonstration, ...]
    style: str = "completion"
    # Translate-test: the same demonstrations the other way round, <language> -> English.
    to_english: bool = False

    @property
    def version(self) -> str:
        return PROMPT_VERSIONS[self.style] + ("-to-en" if self.to_english else "")

    @property
    def target_name(self) -> str:
        return "English" if self.to_english else LANGUAGES[self.language]

    @property
    def source_name(self) -> str:
        return LANGUAGES[self.language] if self.to_english else "English"

    def _pairs(self) -> list[tuple[str, str]]:
        return [(d.target, d.english) if self.to_english else (d.english, d.target) for d in self.demonstrations]

    def completion_prompt(self, text: str) -> str:
        # Same prefix for every segment of a language: engines reuse its KV cache.
        src, tgt = self.source_name, self.target_name
        parts = [f"Translate the following {src} texts into {tgt}.\n\n"]
        parts += [f"{src}: {a}\n{tgt}: {b}\n\n" for a, b in self._pairs()]
        parts.append(f"{src}: {text}\n{tgt}:")
        return "".join(parts)

    def chat_messages(self, text: str) -> list[dict[str, str]]:
        src, tgt = self.source_name, self.target_name
        messages = [{"role": "system", "content": f"Translate the user's {src} text into {tgt}. "
                                                  f"Reply with the {tgt} translation only."}]
        for a, b in self._pairs():
            messages += [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
        messages.append({"role": "user", "content": text})
        return messages


def build_prompt_builder(language: str, config: PromptConfig, data_dir: Path, to_english: bool = False
                         ) -> PromptBuilder:
    language_name(language)
    path = config.demonstrations or data_dir / "mgsm" / "mgsm_exemplars.jsonl"
    demos = load_demonstrations(Path(path), language, config.num_shots) if config.num_shots else []
    return PromptBuilder(language, tuple(demos), config.style, to_english)
