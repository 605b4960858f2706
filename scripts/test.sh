#!/usr/bin/env bash
# Set up and run the whole test suite (real tiny model, real data, real Prefect, real PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check .
# Two processes, one test file each at a time (service stacks spend most of their time waiting;
# xdist starts the files with the most tests first).
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 "$@"
