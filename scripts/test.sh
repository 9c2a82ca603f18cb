#!/usr/bin/env bash
# Set up, then run the test suite (no network needed). Arguments go to pytest; `--fast` leaves out the tests
# marked `slow` (the whole graph, the browser, real training runs): a few minutes, for the edit-test loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
args=()
for arg in "$@"; do
  if [[ "$arg" == "--fast" ]]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
exec .venv/bin/python -m pytest -q "${args[@]}"
