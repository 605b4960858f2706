"""peft LoRA adapter -> GGUF LoRA, for the llama.cpp engine.

llama.cpp's own `convert_lora_to_gguf.py` does the conversion; it ships in llama-cpp-python's source
distribution (vendor/llama.cpp), which `scripts/setup.sh` downloads once into stt's cache. Only the
conversion scripts are extracted; nothing is copied into this repository. Each adapter is converted
once per content hash (cached in `~/.cache/stt/lora/`), so a retrained adapter is converted again. The LoRA
tensors are written in F32 (`--outtype f32`), whatever the base's type: the adapter's values as peft saved them.
An F32 GGUF of a quantised model (stt.gguf_f32) shares its source's Hugging Face folder and converted adapters.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from stt.errors import ConfigError
from stt.files import file_sha256
from stt.models import ResolvedModel, cache_dir, hf_folder

log = logging.getLogger(__name__)

_MEMBERS = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError("engine 'llama-cpp' needs llama-cpp-python: bash scripts/setup.sh installs it") from exc


def sdist_path() -> Path:
    return cache_dir() / "sdist" / f"llama_cpp_python-{_version()}.tar.gz"


def fetch_sdist() -> Path:
    """Download llama-cpp-python's source distribution (the converter's home) once; setup.sh calls this."""
    path = sdist_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={_version()}", "--no-deps",
               "--no-binary", ":all:", "-q", "-d", str(path.parent)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise ConfigError(f"could not download llama-cpp-python {_version()}'s source (for llama.cpp's LoRA "
                              f"converter): {done.stderr.strip()[-300:]}; on an offline machine put the sdist at "
                              f"{path} or set STT_LLAMA_CPP_DIR to a llama.cpp checkout")
    return path


def converter_dir() -> Path:
    """A folder with llama.cpp's conversion scripts: $STT_LLAMA_CPP_DIR, else extracted from the sdist."""
    if os.environ.get("STT_LLAMA_CPP_DIR"):
        folder = Path(os.environ["STT_LLAMA_CPP_DIR"])
        if not (folder / "convert_lora_to_gguf.py").is_file():
            raise ConfigError(f"STT_LLAMA_CPP_DIR={folder} has no convert_lora_to_gguf.py")
        return folder
    folder = cache_dir() / f"llama.cpp-{_version()}"
    if (folder / ".complete").is_file():
        return folder
    sdist = fetch_sdist()
    prefix = f"llama_cpp_python-{_version()}/vendor/llama.cpp/"
    tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and any(m.name[len(prefix):].startswith(x) for x in _MEMBERS)]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    (tmp / ".complete").write_text(_version())
    if folder.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def adapter_gguf(adapter: str | Path, base: ResolvedModel) -> Path:
    """The GGUF LoRA of a peft adapter folder, converted once per adapter content and base weights."""
    adapter = Path(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"adapter folder {adapter} has no adapter_model.safetensors (a peft LoRA adapter)")
    from stt.gguf_f32 import source_model

    # The converter reads the base's config and tensor names only: the same for an F32 copy and its source.
    base = source_model(base) or base
    key = f"{file_sha256(weights)[:16]}-{base.weights_sha256[:12]}"
    out = cache_dir() / "lora" / f"{key}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    script = converter_dir() / "convert_lora_to_gguf.py"
    cmd = [sys.executable, str(script), str(adapter), "--base", str(hf_folder(base)), "--outfile", str(tmp),
           "--outtype", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"converting {adapter} to GGUF LoRA failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp, out)
    log.info("converted %s -> %s", adapter, out)
    return out
