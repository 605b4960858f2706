#!/usr/bin/env bash
# Create .venv and install stt for the CPU (torch from constraints/cpu.txt: the local CPU wheel).
# GPU hosts: install without the constraints file so pip keeps the CUDA torch that vLLM needs.
# Runs once: a stamp of what it installs from (pyproject, constraints, these scripts) skips it next time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.stt-setup-stamp
stamp() { cat pyproject.toml constraints/* scripts/setup.sh scripts/system-deps.sh | sha256sum | cut -d' ' -f1; }
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ] && [ -z "${STT_SETUP_FORCE:-}" ]; then
  echo "stt ready (.venv set up from the same pyproject, constraints and scripts; STT_SETUP_FORCE=1 redoes it)"
  exit 0
fi
# pip's own failures fail the script; hidden: the machine's harmless "location is ignored" warnings and
# setuptools' 10-line notice that every editable install gets (folders named like the package: there are none).
pip_quiet() {
  .venv/bin/pip install -q "$@" 2>&1 \
    | sed -e '/BuildBackendWarning: Editable installation/,/with strategy, WheelFile/d' -e '/is ignored/d'
}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
rm -f "$STAMP"
pip_quiet --upgrade pip
pip_quiet -c constraints/cpu.txt torch
# llama-cpp-python (dev extra: the test endpoint) compiles llama.cpp once (pip caches the wheel). A portable
# AVX2 build: the default native build crashed in libggml-cpu (AVX-512/AMX paths) on this machine type.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF}"
pip_quiet -c constraints/cpu.txt -e ".[dev]"
# prefect-aws (Prefect's results and store credentials on S3: stt result-storage, store_credentials) on its own,
# its dependencies already there: listed in the dev extra it sent pip's resolver into a backtrack of 20+ minutes.
pip_quiet -c constraints/cpu.txt "prefect-aws>=0.7,<0.8"
# llama.cpp's LoRA converter (for adapters on the llama-cpp engine) ships in llama-cpp-python's source
# distribution: downloaded once into ~/.cache/stt/sdist (76 MB), only its conversion scripts are extracted.
.venv/bin/python -c "from stt.lora_gguf import converter_dir; converter_dir()"
.venv/bin/python -c "import stt, torch, prefect, transformers; print('stt ready: torch', torch.__version__, '| prefect', prefect.__version__, '| transformers', transformers.__version__)"
stamp > "$STAMP"
