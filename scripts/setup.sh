#!/usr/bin/env bash
# Create .venv and install editaudit with its test tools. CPU PyTorch is installed first so that
# pip does not pull a multi-GB CUDA build; on a GPU workstation install the torch you want first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "editaudit installed in .venv ($(.venv/bin/editaudit --version))"
