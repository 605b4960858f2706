"""Size the paper's setup (configs/paper.yaml): segments and tokens per stage, GPU-hours, wall time.

Measured here, from local data and the Gemma 3 tokenizer:
- GSM8K train: every example, segmented exactly as the translate stage segments it;
- SQuAD and MultiNLI train are not available offline: their per-item token counts are measured on the
  closest local data (XQuAD = SQuAD v1.1 dev paragraphs; XNLI dev = MultiNLI-style pairs) and scaled to
  the published train sizes (SQuAD v1.1: 87,599 questions on 18,896 paragraphs; MultiNLI: 392,702 pairs);
- the length of a translation relative to its English source, per language, on the 2,490 XNLI dev
  items, which are human-translated into every target language.

    python benchmarks/sizing.py            # prints the tables of docs/scaling.md
"""

from __future__ import annotations

import statistics

from stt.config import resolve_data_dir
from stt.loaders import load_gsm8k, load_squad, load_xnli_dev
from stt.models import hf_folder, resolve_model
from stt.specs import get_task

LANGUAGES = ("de", "ru", "th", "zh")
TRAIN_SIZES = {"gsm8k": None, "squad": 87_599, "mnli": 392_702}  # None: all of the local file
SQUAD_TRAIN_PARAGRAPHS = 18_896
# Output tokens/s per H100 (datatrove's published figures, quoted in issue 13).
THROUGHPUT = {"8B model (paper)": 6_300, "Gemma 3 270M": 23_000}
GPUS = (1, 8, 32)


def main() -> None:
    from transformers import AutoTokenizer

    data = resolve_data_dir()
    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("gemma3-270m")))

    def n_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    # Target/English token ratio per language on the same human-translated items.
    english = load_xnli_dev(data / "xnli" / "xtreme_dev-en.tsv")
    en_tokens = sum(n_tokens([f"{r['premise']} {r['hypothesis']}" for r in english]))
    ratio = {}
    for lang in LANGUAGES:
        rows = load_xnli_dev(data / "xnli" / f"xtreme_dev-{lang}.tsv")
        ratio[lang] = sum(n_tokens([f"{r['premise']} {r['hypothesis']}" for r in rows])) / en_tokens

    per_task = {}
    gsm = load_gsm8k(data / "gsm8k" / "train.jsonl")
    per_task["gsm8k"] = _segments(get_task("gsm8k"), gsm, n_tokens, len(gsm), len(gsm))
    xquad = load_squad(data / "xquad" / "xquad.en.json", split="en", dataset="xquad")
    per_task["squad"] = _squad(xquad, n_tokens)
    xnli = load_xnli_dev(data / "xnli" / "xtreme_dev-en.tsv")
    per_task["mnli"] = _segments(get_task("mnli"), xnli, n_tokens, len(xnli), TRAIN_SIZES["mnli"])

    print("Token ratio translation/English (Gemma 3 tokenizer, XNLI dev, 2,490 items):",
          ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    print()
    print("| task | train items | segments to translate | English source tokens | generated tokens, 4 languages |")
    print("|---|---|---|---|---|")
    total_generated = 0.0
    for task, t in per_task.items():
        generated = sum(t["tokens"] * ratio[lang] for lang in LANGUAGES)
        total_generated += generated
        print(f"| {task} | {t['items']:,} | {t['segments']:,.0f} | {t['tokens'] / 1e6:.1f}M | {generated / 1e6:.1f}M |")
    segments = sum(t["segments"] for t in per_task.values()) * len(LANGUAGES)
    print(f"| total | | {segments / 1e6:.2f}M translations | | {total_generated / 1e6:.0f}M "
          f"(+ the round-trip filter's back-translations, about as long as the English sources) |")
    print()
    print("| model | per-GPU output tok/s | GPU-hours | " + " | ".join(f"wall, {g} GPU{'s' if g > 1 else ''}"
                                                               for g in GPUS) + " |")
    print("|---|---|---|" + "---|" * len(GPUS))
    for name, rate in THROUGHPUT.items():
        hours = total_generated / rate / 3600
        print(f"| {name} | {rate:,} | {hours:.1f} | " + " | ".join(_hm(hours / g) for g in GPUS) + " |")


def _segments(spec, examples, n_tokens, local_items: int, train_items: int) -> dict[str, float]:  # noqa: ANN001
    texts = [seg.text for ex in examples for seg in spec.segments(ex) if seg.translate]
    scale = train_items / local_items
    return {"items": train_items, "segments": len(texts) * scale, "tokens": sum(n_tokens(texts)) * scale}


def _squad(questions, n_tokens) -> dict[str, float]:  # noqa: ANN001
    """A paragraph is translated once however many questions share it (the stage deduplicates)."""
    spec = get_task("squad")
    by_field: dict[str, list[str]] = {}
    for ex in questions:
        for seg in spec.segments(ex):
            if seg.translate:
                by_field.setdefault(seg.field, []).append(seg.text)
    contexts = list(dict.fromkeys(by_field.pop("context", [])))
    per_question = [t for texts in by_field.values() for t in texts]
    q_scale = TRAIN_SIZES["squad"] / len(questions)
    paragraphs = len({ex["context"] for ex in questions})
    c_scale = SQUAD_TRAIN_PARAGRAPHS / paragraphs
    return {"items": TRAIN_SIZES["squad"],
            "segments": len(per_question) * q_scale + len(contexts) * c_scale,
            "tokens": sum(n_tokens(per_question)) * q_scale + sum(n_tokens(contexts)) * c_scale,
            "context_tokens_mean": statistics.mean(n_tokens(contexts))}


def _hm(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


if __name__ == "__main__":
    main()
