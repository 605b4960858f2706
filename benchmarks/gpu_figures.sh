#!/usr/bin/env bash
# Fill the GPU section of benchmarks/RESULTS.md on one GPU host (an H100 for the comparison with datatrove):
#   bash benchmarks/gpu_figures.sh 2>&1 | tee runs/gpu-figures.log
# 1. the whole method on vllm-batch (configs/gpu-check.yaml): translate stage, LoRA training, LoRA evaluation;
#    stage times come from the run's report;
# 2. benchmarks/vllm_throughput.py on the same model: pipeline vs raw LLM.generate on the same prompts
#    (goal >= 0.95), with the run's LoRA adapter, per-GPU output tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -x .venv-vllm/bin/python ] || bash scripts/setup-vllm.sh
export STT_VLLM_PYTHON=${STT_VLLM_PYTHON:-$PWD/.venv-vllm/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv-vllm/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
.venv/bin/python -m stt_app.cli run --config configs/gpu-check.yaml --no-prefect
cat runs/gpu-check/report.md
.venv/bin/python benchmarks/vllm_throughput.py --model gemma3-270m --prompts 2048 --language de \
  --lora runs/gpu-check/gsm8k/adapters/self-translate-train-de "$@"
