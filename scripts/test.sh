#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, end-to-end tests included (a real
# `dagster dev`, a real Chromium for the UI test, and the distributed stack of
# tests/distributed). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
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
# The distributed tests (tests/distributed) start Debian's Postgres and Redis themselves.
debian_packages=()
if ! command -v redis-server >/dev/null 2>&1; then debian_packages+=(redis-server); fi
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
then
    debian_packages+=(postgresql)
fi
if [ "${#debian_packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's ${debian_packages[*]} for the distributed tests..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debian_packages[@]}" >/dev/null
    else
        echo "warning: ${debian_packages[*]} not installed; the distributed tests will be skipped" >&2
    fi
fi
exec .venv/bin/python -m pytest "$@"
