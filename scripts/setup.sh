#!/usr/bin/env bash
# Create (or reuse) cvgen's virtualenv and install cvgen into it (editable), with the dev tools.
# Prints the venv path on stdout; progress goes to stderr.
#
# Locked (the default): every package comes from requirements.lock, exact versions with their
# SHA-256 hashes (pip --require-hashes), so a fresh machine gets what main was tested with, not
# whatever was released since. Torch is the one exception: the lock leaves it out, so that GPU
# users keep their own build. It is installed after the locked packages (which hold its
# dependencies) as $CVGEN_TORCH_SPEC, default torch==2.13.0 (this kind of machine has it as a
# local CPU build), unless the venv already has a torch. `pip check` then proves the set
# consistent. Venv: $CVGEN_VENV or ./.venv.
#
# Latest (CVGEN_LATEST=1, or `scripts/test.sh --latest`): the newest release of everything
# pyproject.toml allows (torch held at the build $CVGEN_TORCH_SPEC installed), in a venv of its own,
# $CVGEN_LATEST_VENV or <venv>-latest, to find drift on purpose before it reaches the lock.
#
# Both then install the llama.cpp engine's binding (the `llama` extra, llama-cpp-python 0.3.36,
# pinned to the llama.cpp commit scripts/build_llama_cpp.sh builds) from its sdist, hash-checked
# against requirements-llama.lock, with CMAKE_ARGS=-DLLAMA_BUILD=OFF: nothing is compiled, and
# the package loads libllama.so from $LLAMA_CPP_LIB_PATH (the shared build's bin folder). The
# sdist is kept in $CVGEN_CACHE/sdists; no built wheel goes to pip's cache (a wheel without the
# library would be a trap for another venv).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$REPO/requirements.lock"
LLAMA_LOCK="$REPO/requirements-llama.lock"
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
VENV="${CVGEN_VENV:-$REPO/.venv}"
if [ "${CVGEN_LATEST:-0}" = "1" ]; then
  VENV="${CVGEN_LATEST_VENV:-$VENV-latest}"
fi
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
install_torch() {
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    step "installing $TORCH_SPEC"
    pip_quietly install -q "$TORCH_SPEC"
  fi
}
install_binding() {
  # $1: "locked" (no dependency resolved) or "latest" (its dependencies at their newest)
  local want spec
  want="$(sha256sum "$LLAMA_LOCK" | cut -d' ' -f1)"
  spec="$(grep -oE '^llama-cpp-python==[0-9.]+' "$LLAMA_LOCK")"
  if [ "$(cat "$VENV/.cvgen-llama.sha256" 2>/dev/null)" = "$want" ] \
    && "$VENV/bin/python" -c "import sys; from importlib.metadata import version; sys.exit(version('llama_cpp_python') != sys.argv[1])" "${spec#*==}" 2>/dev/null; then
    return 0
  fi
  step "installing $spec (the llama extra) from its sdist, LLAMA_BUILD=OFF: no compile"
  pip_quietly download -q --no-deps --no-binary :all: --require-hashes -r "$LLAMA_LOCK" -d "$CACHE/sdists"
  if [ "$1" = "locked" ]; then
    CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip_quietly install -q --no-deps --no-build-isolation \
      --require-hashes --no-index --find-links "$CACHE/sdists" --no-cache-dir -r "$LLAMA_LOCK"
  else
    CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip_quietly install -q --no-build-isolation -c "$held" \
      --find-links "$CACHE/sdists" --no-binary llama-cpp-python --no-cache-dir "$spec"
  fi
  pip_quietly check
  echo "$want" >"$VENV/.cvgen-llama.sha256"
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi

if [ "${CVGEN_LATEST:-0}" = "1" ]; then
  # torch first: installing cvgen's other requirements first would pull a CUDA build
  install_torch
  step "installing the NEWEST releases of cvgen's requirements (no lock; torch held)"
  pip_quietly install -q -U pip
  # torch stays the build installed above: an eager upgrade would swap it for the newest
  # default (CUDA) build, several GB
  held="$(mktemp)"
  "$VENV/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch'))" >"$held"
  pip_quietly install -q -U --upgrade-strategy eager -c "$held" -e "$REPO[dev]"
  install_binding latest
  rm -f "$held"
  "$VENV/bin/python" -m pip freeze --exclude-editable >"$VENV/cvgen-latest-freeze.txt"
  step "resolved versions: $VENV/cvgen-latest-freeze.txt"
  echo "$VENV"
  exit 0
fi

STAMP="$VENV/.cvgen-lock.sha256"
WANT="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  step "installing the locked requirements (requirements.lock, hash-checked)"
  # --no-deps: the lock is the whole closure; nothing outside it is resolved or fetched
  pip_quietly install -q --no-deps --require-hashes -r "$LOCK"
  install_torch
  step "installing cvgen (editable, no build isolation: hatchling comes from the lock)"
  pip_quietly install -q --no-deps --no-build-isolation -e "$REPO"
  pip_quietly check
  echo "$WANT" >"$STAMP"
  install_binding locked
else
  install_torch
  # the checkout may have moved: make sure the editable install points at this one. -I keeps
  # the current folder off sys.path, so the check sees what a script outside the checkout sees.
  if ! "$VENV/bin/python" -I -c "import cvgen, pathlib, sys; sys.exit(pathlib.Path(cvgen.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())" "$REPO" 2>/dev/null; then
    step "installing cvgen (editable) from $REPO"
    pip_quietly install -q --no-deps --no-build-isolation -e "$REPO"
  fi
  install_binding locked
fi
echo "$VENV"
