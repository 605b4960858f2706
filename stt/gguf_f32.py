"""A quantised GGUF model rewritten with every tensor in float32: the same weights, without quantised kernels.

Why: llama.cpp runs Q4_K/Q6_K weights with 8-bit-quantised activations, so its log-probabilities differ from
transformers' (which runs the same weights dequantised to fp32) by ~0.1 nats per token; a LoRA adapter applied
slightly wrong hides below that. In float32 both engines compute with the same numbers, so a comparison can be
tight (benchmarks/lora_parity_f32.py, tests/test_llamacpp_engine.py).

The tensors are dequantised with `gguf.quants.dequantize`, the function transformers' GGUF loader uses (see
stt.models.convert_gguf), so the values equal those in stt's Hugging Face folder, up to Gemma's norm weights,
which transformers stores as `w - 1` and applies as `1 + w` (a float32 round trip: at most one ulp). Metadata
and tensor names are copied as they are; the file type says all-F32. Converted once per weights hash and cached
in `~/.cache/stt/gguf-f32/`, beside a note naming the source, so that what needs the weights as a Hugging Face
folder (the LoRA converter) uses the source's folder instead of converting 1 GB again (`source_model`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from stt.files import exclusive, write_text_atomic
from stt.models import ResolvedModel, cache_dir, resolve_model

log = logging.getLogger(__name__)

# Keys GGUFWriter writes itself (architecture), the reader's own header pseudo-keys, and the quantisation
# keys that stop being true once every tensor is F32.
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def write_f32_gguf(source: Path, target: Path) -> Path:
    """Write `source`'s metadata and tensors to `target`, every tensor dequantised to float32."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
    from gguf.quants import dequantize

    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(target, arch=arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in _SKIP_KEYS:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        # dequantize() returns the logical shape in numpy order (ne reversed), which add_tensor expects.
        values = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        expected = tuple(int(n) for n in reversed(tensor.shape))
        if values.shape != expected:
            values = values.reshape(expected)
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _note(gguf: Path) -> Path:
    return gguf.with_suffix(".source.json")


def f32_gguf(model: ResolvedModel) -> ResolvedModel:
    """`model` (a GGUF) with every tensor in float32, converted once per weights hash and cached."""
    target = cache_dir() / "gguf-f32" / f"{model.weights_sha256[:16]}-f32.gguf"
    if not target.is_file() or not _note(target).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(target.parent / f".{target.name}.lock"):  # two processes must not write one file
            if not target.is_file():
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                try:
                    write_f32_gguf(model.path, tmp)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                log.info("wrote %s (%s in float32)", target, model.path)
            write_text_atomic(_note(target), json.dumps({"source": model.model_id, "path": str(model.path),
                                                         "weights_sha256": model.weights_sha256}))
    return resolve_model(str(target))


def source_model(model: ResolvedModel) -> ResolvedModel | None:
    """The quantised model an F32 GGUF of ours was made from (None for any other model)."""
    note = _note(model.path)
    if not model.is_gguf or model.path.parent != cache_dir() / "gguf-f32" or not note.is_file():
        return None
    source = json.loads(note.read_text())
    # By id: a short name resolves to its package's file, a path to itself; the hash proves it is the same one.
    resolved = resolve_model(source["source"])
    return resolved if resolved.weights_sha256 == source["weights_sha256"] else None
