#!/usr/bin/env bash
# Create the vLLM environment (.venv-vllm) for engine kind 'vllm-batch', on a GPU host.
# Then: export STT_VLLM_PYTHON=$PWD/.venv-vllm/bin/python   (or set engine.vllm_python in the config)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/pip install -q --upgrade pip
.venv-vllm/bin/pip install -q -r requirements-vllm.txt
.venv-vllm/bin/python -c "import vllm, pyarrow; print('vLLM environment ready: vllm', vllm.__version__)"
echo "export STT_VLLM_PYTHON=$PWD/.venv-vllm/bin/python"
