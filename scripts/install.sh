#!/usr/bin/env bash
# Creates .venv and installs kdcvg with its dev tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.kdcvg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # The CPU build of torch first: a looser pin would pull GBs of CUDA wheels.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[dev]"
  # PP-OCR for TSScore; --no-deps keeps the GUI opencv-python out (its other deps are in pyproject.toml).
  python -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4
  touch "$stamp"
fi
