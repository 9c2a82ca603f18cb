#!/usr/bin/env bash
# Lint (ruff), formatting (ruff format) and the layer contracts (import-linter), as configured in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
