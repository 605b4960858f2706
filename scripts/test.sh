#!/usr/bin/env bash
# Set up (once) and run the tests: real tiny model, real data, real Prefect.
#   bash scripts/test.sh             the default tier (5 min 39 s on 2 cores in a clean clone, 2026-12-04)
#   bash scripts/test.sh --full      both tiers (25 min 0 s, 2026-12-04): adds PostgreSQL + Prefect
#                                    server + workers, server and database faults, fan-out and worker
#                                    kills, every kill point, the model-running stage-key table, real vLLM
#   bash scripts/test.sh --full-only the full tier's own tests (what --full adds: the tests marked full):
#                                    .ci/run runs it after the default tier (23 min 15 s,
#                                    2026-12-04)
# Other arguments go to pytest (e.g. `bash scripts/test.sh -k keys`, `-m "not model"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the import contracts in pyproject.toml
# Two processes; a file's tests stay in one (its module fixtures are built once; groups and the longest-first
# order set in tests/conftest.py, kept by --no-loadscope-reorder). Per-test time limits: tests/conftest.py.
# Seconds per file are printed at the end.
PYTEST=(.venv/bin/python -m pytest -q --durations=15)
args=("$@")
[[ " $* " == *" --full-only "* && " $* " != *" --full "* ]] && args+=(--full)
if [[ " ${args[*]} " != *" --full "* ]]; then
  exec "${PYTEST[@]}" -n 2 --dist loadgroup --no-loadscope-reorder "${args[@]}"
fi
# The full tier needs the vLLM environment too (tests/test_vllm_engine.py): built once, then a stamp skips it.
bash scripts/setup-vllm.sh
# The full tier: the service-stack tests (one PostgreSQL + Prefect server + workers stack for all of them) spend
# minutes waiting on heartbeats, restarts and workers, so they run in a third process beside the two that run
# everything else; their output follows the others'.
log=$(mktemp -t stt-services-XXXXXX.log)
"${PYTEST[@]}" --services only "${args[@]}" >"$log" 2>&1 &
services=$!
trap 'kill "$services" 2>/dev/null || true' EXIT
rc=0
"${PYTEST[@]}" -n 2 --dist loadgroup --no-loadscope-reorder --services without "${args[@]}" || rc=$?
services_rc=0
wait "$services" || services_rc=$?
trap - EXIT
echo; echo "==================== the service-stack tests (run beside the others; $log) ===================="
cat "$log"
[[ $services_rc == 5 ]] && services_rc=0  # no service test selected (e.g. -k), not a failure
echo "tests without the service stack: exit $rc; service-stack tests: exit $services_rc"
exit $((rc != 0 ? rc : services_rc))
