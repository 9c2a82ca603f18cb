#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project with its test extras. Idempotent; offline-safe afterwards.
# The install is skipped when .venv was set up from the same pyproject.toml and this script (a stamp in .venv);
# `bash scripts/setup.sh --reinstall` forces it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.recsys-setup-stamp
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--reinstall" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
  && .venv/bin/python -c "import recsys_pipeline" 2>/dev/null; then
  exit 0
fi
rm -f "$stamp"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first so pip takes the local wheels (and any pip constraint) before resolving the rest.
.venv/bin/python -m pip install --quiet torch torchvision
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "$wanted" > "$stamp"
