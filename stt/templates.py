"""Prompt templates for fine-tuning and evaluation: one place, versioned, used by both.

A template turns an example into (prompt, target). Training puts the loss on the target tokens
only; evaluation feeds the prompt and reads what the model writes (or, for NLI, scores the three
label words). The words around the fields stay in English in every language: the model learns
one format, and the answer is parsed the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEMPLATE_VERSION = "task-templates-v1"

NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Pair:
    prompt: str
    target: str  # begins with a space: it follows the prompt's last word


def math_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def math_pair(ex: dict[str, Any]) -> Pair:
    # Chain of thought, then a fixed closing line the evaluation parses.
    rationale = ex["rationale"].strip()
    return Pair(math_prompt(ex["question"]), f" {rationale}\nThe answer is {ex['answer']}.")


def nli_prompt(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise}\nHypothesis: {hypothesis}\nRelation:"


def nli_pair(ex: dict[str, Any]) -> Pair:
    return Pair(nli_prompt(ex["premise"], ex["hypothesis"]), f" {ex['label']}")


def qa_prompt(context: str, question: str) -> str:
    return f"Context: {context}\nQuestion: {question}\nAnswer:"


def qa_pair(ex: dict[str, Any]) -> Pair:
    return Pair(qa_prompt(ex["context"], ex["question"]), f" {ex['answer_text']}")
