#!/usr/bin/env bash
# Create .venv and install Compression Studio with its test tools. Safe to run again.
# Where there is no NVIDIA GPU, the CPU build of torch goes in first so that pip does not
# pull a CUDA build of several GB to satisfy the plain `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" install torch
  else
    "${PIP[@]}" install --timeout 15 --retries 0 --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" 2>/dev/null \
      || "${PIP[@]}" install "torch==2.13.0"
  fi
fi
"${PIP[@]}" install -e ".[dev]"
