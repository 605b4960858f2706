#!/usr/bin/env bash
# Start a process worker on this host (no docker): bash scripts/worker.sh gpu   (or cpu)
# Flow runs execute in this checkout (STT_PROJECT_DIR) with its .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
POOL=${1:-gpu}
export STT_PROJECT_DIR=${STT_PROJECT_DIR:-$PWD}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export PATH="$PWD/.venv/bin:$PATH"
# Heartbeats per flow run: deployments/automations.yaml marks a run Crashed when they stop (worker lost).
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}
# A server whose database restarts answers 500 for a moment: retry those too (backoff 2, 4, ... 256 s).
export PREFECT_CLIENT_RETRY_EXTRA_CODES=${PREFECT_CLIENT_RETRY_EXTRA_CODES:-500}
export PREFECT_CLIENT_MAX_RETRIES=${PREFECT_CLIENT_MAX_RETRIES:-8}
# A GPU worker per GPU: CUDA_VISIBLE_DEVICES=3 bash scripts/worker.sh gpu. Each takes one flow run at a time
# and has its own model slot, so workers on one host do not wait on each other's slot.
NAME="stt-$POOL-$(hostname)${CUDA_VISIBLE_DEVICES:+-gpu$CUDA_VISIBLE_DEVICES}"
if [ "$POOL" = gpu ]; then
  export STT_MODEL_SLOT=${STT_MODEL_SLOT:-stt-model-$(hostname)${CUDA_VISIBLE_DEVICES:+-gpu$CUDA_VISIBLE_DEVICES}}
  exec prefect worker start --pool "$POOL" --type process --name "$NAME" --limit "${STT_WORKER_LIMIT:-1}"
fi
exec prefect worker start --pool "$POOL" --type process --name "$NAME"
