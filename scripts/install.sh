#!/usr/bin/env bash
# Create .venv and install clip-curator with what its tests need.
# torch is pinned here, not in pyproject.toml: on a GPU machine install the build for your CUDA
# first (the pins below are the CPU-tested pair), then `pip install -e .`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -c "import torch, torchvision, open_clip, guided_diffusion.script_util" 2>/dev/null
# The browser tests drive Debian's Chromium through its own chromedriver (never a downloaded browser).
if [ "${SKIP_BROWSER:-0}" != 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
fi
echo "installed into $VENV"
