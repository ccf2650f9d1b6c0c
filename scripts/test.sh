#!/usr/bin/env bash
# Set up (if needed), then run the fast test suite. Extra arguments go to pytest, e.g. `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The studio's browser test drives Debian's chromium through its chromedriver: install both from Debian packages where
# they are missing and apt-get can (as root). Elsewhere that one test is skipped, saying why.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    echo "[test] installing chromium and chromium-driver from Debian packages (for the studio's browser test)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
        >/dev/null 2>&1 || echo "[test] could not install chromium; the browser test will be skipped"
fi
exec .venv/bin/python -m pytest -q "$@"
