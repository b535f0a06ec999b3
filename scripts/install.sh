#!/usr/bin/env bash
# Installs sla2-train (editable) and everything its tests need into the current Python.
# An existing torch build (e.g. a CUDA one) is kept; without one, a CPU build is installed first,
# because a bare `pip install torch` would pull several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${SLA2_TORCH_SPEC:-torch==2.13.0}

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] no torch found: installing $TORCH_SPEC"
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# pyenv only sees new console scripts (pytest) after a rehash
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
echo "[install] sla2-train ready ($("$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)'))"
