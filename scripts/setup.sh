#!/usr/bin/env bash
# Create the project venv (.venv) and install kseg with its development extras and the
# distributed profile's packages (Postgres, Celery and S3 clients, SeaweedFS's binary).
# Idempotent: re-running only installs what changed. Used by demo.sh, test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.kseg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev,distributed]"
    touch "$stamp"
fi
