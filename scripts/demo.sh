#!/usr/bin/env bash
# Set up, then materialize the whole graph on the bundled MovieLens data and print the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# MovieLens posters (not part of the repository): used as item images when the folder exists next to the project.
if [[ -z "${RECSYS_IMAGE_ROOT:-}" && -d ../shared/data/movielens-posters ]]; then
    export RECSYS_IMAGE_ROOT="$(cd ../shared/data/movielens-posters && pwd)"
fi
exec .venv/bin/recsys demo "$@"
