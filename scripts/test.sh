#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, end-to-end tests included
# (a real `dagster dev`, and a real Chromium for the UI test). Extra arguments go
# to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The UI test drives Debian's Chromium through Playwright (no browser download is
# possible here); install it when missing and we are allowed to.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's chromium for the UI test..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "warning: chromium is not installed; the UI test will be skipped" >&2
    fi
fi
exec .venv/bin/python -m pytest "$@"
