#!/usr/bin/env bash
# Create .venv and install stt for the CPU (torch from constraints/cpu.txt: the local CPU wheel).
# GPU hosts: install without the constraints file so pip keeps the CUDA torch that vLLM needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install -q -c constraints/cpu.txt torch 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install -q -c constraints/cpu.txt -e ".[dev]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import stt, torch, prefect, transformers; print('stt ready: torch', torch.__version__, '| prefect', prefect.__version__, '| transformers', transformers.__version__)"
