#!/usr/bin/env bash
# Create (or reuse) cvgen's virtualenv and install cvgen into it, with the dev tools.
# Usage: source-free; prints nothing but progress on stderr. Venv: $CVGEN_VENV or ./.venv.
# Torch is installed FIRST, pinned to the CPU build found on this kind of machine, unless the
# venv already has one (GPU users: install your own torch first, or set CVGEN_TORCH_SPEC).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVGEN_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${CVGEN_TORCH_SPEC:-torch==2.13.0}"
step() { echo "setup: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -U pip >&2
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  step "installing $TORCH_SPEC (before anything that depends on torch)"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" >&2
fi
step "installing cvgen (editable) with its dev tools"
"$VENV/bin/python" -m pip install -q -e "$REPO[dev]" >&2 2> >(grep -v "^WARNING: Location" >&2)
echo "$VENV"
