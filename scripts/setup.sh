#!/usr/bin/env bash
# Create .venv and install cogvideo_lite with its dependencies. Safe to re-run: it reinstalls only
# when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PINS="${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.cogvideo_lite-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[setup] .venv is up to date"
    exit 0
fi
# torch and torchvision first, as a matching pair (timm needs torchvision); a later `pip install -e .`
# then finds them satisfied and installs nothing heavier.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_PINS (a few minutes)"
    .venv/bin/pip install --quiet $TORCH_PINS
fi
echo "[setup] installing cogvideo_lite and its dependencies"
.venv/bin/pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
echo "[setup] done"
