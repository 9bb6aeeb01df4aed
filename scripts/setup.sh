#!/usr/bin/env bash
# Create (or reuse) cvgen's virtualenv and install cvgen into it (editable), with the dev tools.
# Prints the venv path on stdout; progress goes to stderr. Venv: $CVGEN_VENV or ./.venv.
# Torch is installed FIRST (torch==2.13.0, which this kind of machine has as a local CPU build)
# unless the venv already has one: GPU users install their own torch first, or set
# CVGEN_TORCH_SPEC. Installing cvgen's other requirements first would pull a CUDA build.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVGEN_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${CVGEN_TORCH_SPEC:-torch==2.13.0}"
step() { echo "setup: $*" >&2; }
pip_quietly() {
  # pip's output goes to a log, shown (less the local-index noise) only when pip fails
  local log status=0
  log="$(mktemp)"
  "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    step "pip $* failed (exit $status)"
    exit "$status"
  fi
  rm -f "$log"
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  pip_quietly install -q -U pip
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  step "installing $TORCH_SPEC (before anything that depends on torch)"
  pip_quietly install -q "$TORCH_SPEC"
fi
step "installing cvgen (editable) with its dev tools"
pip_quietly install -q -e "$REPO[dev]"
echo "$VENV"
