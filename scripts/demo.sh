#!/usr/bin/env bash
# Set up, then materialize the whole graph on the bundled MovieLens data and print the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/recsys demo "$@"
