"""The batch runner's vLLM objects, built against the installed vLLM (full tier: `scripts/test.sh --full` builds
`.venv-vllm` with `scripts/setup-vllm.sh`).

`stt/vllm_runner.py --check-api` builds exactly the objects the runner builds (the `LLM` keywords, through
`EngineArgs`; the generation and scoring `SamplingParams`; `LoRARequest`) and checks the calls and attributes
the runner reads (`LLM.generate`'s keywords, `RequestOutput`, `CompletionOutput`, `Logprob`), so an API drift
between the CPU build tested here and the GPU wheel of the same version fails before a run. The runner's
operations themselves run on the real model in tests/test_vllm_engine.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("STT_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
RUNNER = ROOT / "stt" / "vllm_runner.py"

pytestmark = pytest.mark.full


def _pinned() -> str:
    for line in (ROOT / "requirements-vllm.txt").read_text().splitlines():
        if line.startswith("vllm=="):
            return line.split("==")[1].strip()
    raise AssertionError("requirements-vllm.txt pins no vllm version")


def test_the_runner_builds_its_vllm_objects_against_the_installed_vllm(tmp_path):
    assert VLLM_PYTHON.is_file(), f"no vLLM environment at {VLLM_PYTHON}: bash scripts/setup-vllm.sh"
    from stt.models import hf_folder, resolve_model

    folder = hf_folder(resolve_model("gemma3-270m"))  # the converted folder vLLM would load on a GPU
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": str(folder), "max_model_len": 2048, "dtype": "bfloat16",
                                    "temperature": 0.0, "seed": 0}))
    done = subprocess.run([str(VLLM_PYTHON), "-P", str(RUNNER), "--check-api", "--settings", str(settings)],
                          capture_output=True, text=True, timeout=900)
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    print(json.dumps(report, indent=1))
    assert report["vllm"] == _pinned()
    assert report["problems"] == []
    assert len(report["checked"]) >= 20  # every LLM keyword, both SamplingParams, LoRARequest, outputs
    assert done.returncode == 0
