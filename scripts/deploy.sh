#!/usr/bin/env bash
# Create the work pools (if missing) and register every deployment of deployments/prefect.yaml.
# Needs PREFECT_API_URL (and PREFECT_API_AUTH_STRING when the server has basic auth).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-prefect}
command -v "$PREFECT" >/dev/null || PREFECT=.venv/bin/prefect
for pool in gpu cpu; do
  "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1 || "$PREFECT" work-pool create "$pool" --type process
done
# Model-holding flow runs at a time on the gpu pool: 1 for one GPU; the number of GPU workers for fan-out.
"$PREFECT" work-pool set-concurrency-limit gpu "${STT_GPU_POOL_LIMIT:-1}"
# Crash flow runs whose worker stopped sending heartbeats, so a lost worker does not hold the pool.
# Replaced, not kept: a fix to deployments/automations.yaml reaches servers deployed before it.
if "$PREFECT" automation inspect stt-crash-zombie-flow-runs >/dev/null 2>&1; then
  "$PREFECT" --no-prompt automation delete stt-crash-zombie-flow-runs
fi
# STT_AUTOMATIONS_FILE: the test stack deploys a copy with a shorter window (tests/services/conftest.py).
"$PREFECT" automation create --from-file "${STT_AUTOMATIONS_FILE:-deployments/automations.yaml}"
"$PREFECT" --no-prompt deploy --all --prefect-file deployments/prefect.yaml
"$PREFECT" deployment ls
