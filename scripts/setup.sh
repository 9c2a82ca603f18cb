#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project with its test extras. Idempotent; offline-safe afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first so pip takes the local wheels (and any pip constraint) before resolving the rest.
.venv/bin/python -m pip install --quiet torch torchvision
.venv/bin/python -m pip install --quiet -e ".[test]"
