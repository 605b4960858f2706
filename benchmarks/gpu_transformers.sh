#!/usr/bin/env bash
# The transformers engine on one CUDA GPU in bf16, on a model of Gemma 3 270M's shape with random weights
# (the real weights do not travel to the lent GPU machine): translation, LoRA training and evaluation, for
# code paths and throughput, not quality. Fills "GPU: transformers engine" in benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_transformers.sh BUNDLE OUT
# BUNDLE: a .tar.gz with model/ (Gemma 3 270M's config.json and tokenizer files, e.g. from the converted
# GGUF's folder in ~/.cache/stt/models/) and data/ (gsm8k, mgsm, xnli as in ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$1 out=$2
shift 2  # the rest: --set overrides for the run
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
work=${STT_GPU_WORK:-/tmp/stt-gpu}
py=${PYTHON:-python3}
mkdir -p "$work" "$out"
tar -C "$work" -xzf "$bundle"
export STT_DATA_DIR=$work/data PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"
# GPU memory and utilisation every 0.5 s while the benchmarks run (peak memory of the whole script).
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 500 > "$out/smi.csv" &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
$py benchmarks/random_model.py --source "$work/model" --out "$work/gemma3-270m-random" --dtype bfloat16
t0=$(date +%s)
# 1. translation: raw engine vs the pipeline on the same 64 GSM8K examples (prefix KV reused and not).
$py benchmarks/translate_throughput.py --model "$work/gemma3-270m-random" --examples 64 --batch-size 64 \
  --language de --skip-naive 2>&1 | grep -v "Loading weights" | tee "$out/translate_throughput.txt"
t1=$(date +%s)
# 2. the whole method without Prefect: translate, build, LoRA on CUDA, evaluation (math generation, NLI scoring).
$py -m stt_app.cli run --config configs/gpu-transformers.yaml --no-prefect --run-dir "$work/run" \
  --set engine.model="$work/gemma3-270m-random" "$@" 2>&1 | grep -v "Loading weights" | tee "$out/run.log"
t2=$(date +%s)
$py benchmarks/gpu_summary.py "$work/run" | tee "$out/jobs.md"
cp "$work/run/report.md" "$out/report.md"
echo "wall: translate_throughput $((t1 - t0)) s, pipeline $((t2 - t1)) s" | tee "$out/wall.txt"
kill $smi 2>/dev/null || true
awk -F', ' '{gsub(/ MiB/,"",$2); if ($2+0 > m) m = $2+0} END {print "peak GPU memory used: " m " MiB"}' \
  "$out/smi.csv" | tee -a "$out/wall.txt"
