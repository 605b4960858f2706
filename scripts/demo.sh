#!/usr/bin/env bash
# Set up, start a local Prefect server (UI on http://127.0.0.1:4200) unless PREFECT_API_URL is set,
# and run the whole method on the CPU with the real Gemma 3 270M (configs/demo.yaml): translate real
# GSM8K examples into German and Thai, fine-tune zero-shot and Self-Translate-Train LoRA adapters,
# evaluate on MGSM, report. Rerunning resumes: finished stages are reused.
# Extra arguments go to `stt run`, e.g. `bash scripts/demo.sh --set eval.limit=20`.
# `bash scripts/demo.sh --vllm` runs the same demo on vLLM (configs/demo-vllm.yaml), setting up .venv-vllm once.
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/demo.yaml
if [ "${1:-}" = "--vllm" ]; then
  shift
  config=configs/demo-vllm.yaml
  bash scripts/setup-vllm.sh
  export STT_VLLM_PYTHON=${STT_VLLM_PYTHON:-$PWD/.venv-vllm/bin/python}
fi
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p runs
if [ -z "${PREFECT_API_URL:-}" ]; then
  export PREFECT_API_URL=http://127.0.0.1:4200/api
  if ! curl -sf "$PREFECT_API_URL/health" >/dev/null 2>&1; then
    echo "starting Prefect server (log: runs/prefect-server.log)"
    # Leases on disk: a run killed while holding the model slot frees it when its lease expires, even
    # across a server restart (the default in-memory store forgets the lease and the slot stays taken).
    export PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem
    # setsid: its own session, so Ctrl-C on the demo stops the demo and leaves the UI up.
    setsid nohup .venv/bin/prefect server start --host 127.0.0.1 --port 4200 > runs/prefect-server.log 2>&1 < /dev/null &
    echo $! > runs/prefect-server.pid
    for _ in $(seq 60); do curl -sf "$PREFECT_API_URL/health" >/dev/null 2>&1 && break; sleep 1; done
  fi
  echo "Prefect UI: http://127.0.0.1:4200  (stop the server: kill \$(cat runs/prefect-server.pid))"
fi
.venv/bin/stt run --config "$config" "$@"
