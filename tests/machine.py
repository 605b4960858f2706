"""A HOME for a test's "machine of its own": empty of run data, but holding the installed model as a machine's
image would (the unpacked GGUF, its Hugging Face conversion, the tokenizer's kept copy) and llama.cpp's LoRA
converter sources.

Converting the GGUF for a fresh HOME takes 100-200 s on 2 cores (most of it transformers reading the GGUF's
tokenizer), and four machines converting at once made the scale-out tests run past their limit. The conversion
itself is tested where the model is first resolved; what these tests are about is the run data, which each
machine still finds only in the bucket. Files are hard-linked (no copy); every writer of these caches writes a
temp name and renames it, so no machine can change another's file in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem: a copy
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def machine_home(home: Path) -> Path:
    """`home` holding Gemma 3 270M unpacked and converted, its tokenizer's copy, and llama.cpp's converter
    sources; nothing else."""
    from stt.engines.tokenizer import own_tokenizer
    from stt.models import cache_dir, hf_folder, resolve_model

    model = resolve_model("gemma3-270m")  # unpacked and converted in this process's own HOME first, if not yet
    converted = hf_folder(model)
    ours = cache_dir()
    gguf = model.path.parent  # the package's folder under ~/.cache, where a fresh HOME would unpack it
    parts = {gguf: home / ".cache" / gguf.name, converted: home / ".cache" / "stt" / "models" / converted.name}
    parts.update({src: home / ".cache" / "stt" / src.name for src in ours.glob("llama.cpp-*") if src.is_dir()})
    own_tokenizer(str(converted))  # its tokenizer's kept copy (stt/engines/tokenizer.py), made here if not yet
    if (ours / "tokenizers").is_dir():
        parts[ours / "tokenizers"] = home / ".cache" / "stt" / "tokenizers"
    for source, target in parts.items():
        _link_tree(source, target)
    return home
