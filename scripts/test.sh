#!/usr/bin/env bash
# Set everything up and run the checks: lint, format, types, and the whole test suite
# (including the slow tests on the real SmolLM2-135M model, the second model Gemma 3 270M and
# the real llama.cpp, one shared-library build for the binaries and the binding, which this
# script fetches and builds into ~/.cache/cvgen, and the browser tests on Debian's chromium,
# which it installs with apt-get when missing). Extra arguments go to pytest.
#
# The packages come from requirements.lock (see scripts/setup.sh). `--latest` (first argument,
# or CVGEN_LATEST=1) runs the same checks with the newest release of every requirement instead,
# in a venv of its own, to find drift on purpose; it prints the versions it resolved.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ "${1:-}" = "--latest" ]; then
  shift
  export CVGEN_LATEST=1
fi
VENV="$(bash scripts/setup.sh)"
if [ "${CVGEN_LATEST:-0}" = "1" ]; then
  echo "test: --latest: $(grep -iE '^(transformers|torch|numpy|scipy|gguf|accelerate|tokenizers|huggingface.hub)==' "$VENV/cvgen-latest-freeze.txt" | tr '\n' ' ')" >&2
fi
CVGEN_REAL_MODEL="$(PYTHON="$VENV/bin/python" bash scripts/fetch_model.sh)"
export CVGEN_REAL_MODEL
CVGEN_SECOND_MODEL="$(PYTHON="$VENV/bin/python" bash scripts/fetch_second_model.sh)"
export CVGEN_SECOND_MODEL
export CVGEN_REQUIRE_REAL_MODEL="${CVGEN_REQUIRE_REAL_MODEL:-1}"
echo "test: llama.cpp (built once, about 21 min on 2 cores, then cached)" >&2
CVGEN_LLAMA_CPP="$(PYTHON="$VENV/bin/python" bash scripts/build_llama_cpp.sh)"
export CVGEN_LLAMA_CPP
export CVGEN_REQUIRE_LLAMA_CPP="${CVGEN_REQUIRE_LLAMA_CPP:-1}"
echo "test: chromium for the browser tests (Debian's, installed with apt-get if missing)" >&2
CVGEN_CHROMIUM="$(bash scripts/ensure_chromium.sh)"
export CVGEN_CHROMIUM
export CVGEN_REQUIRE_BROWSER="${CVGEN_REQUIRE_BROWSER:-1}"
echo "test: ruff check, ruff format --check, mypy" >&2
"$VENV/bin/ruff" check cvgen tests scripts
"$VENV/bin/ruff" format --check cvgen tests scripts
# mypy's incremental cache lives with the other caches, one per mypy version: a warm run
# re-checks only what changed (measured: 69 s cold, 2 s warm on 2 cores), and mypy validates
# each cached module against its source
MYPY_VERSION="$("$VENV/bin/mypy" --version | cut -d' ' -f2)"
"$VENV/bin/mypy" --cache-dir "${CVGEN_CACHE:-$HOME/.cache/cvgen}/mypy/$MYPY_VERSION" cvgen
# measured tables from the integration tests (layer-index KL, sign figures) are kept here
export CVGEN_ARTIFACTS="${CVGEN_ARTIFACTS:-${CVGEN_CACHE:-$HOME/.cache/cvgen}/artifacts}"
echo "test: pytest (measured tables go to $CVGEN_ARTIFACTS)" >&2
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
