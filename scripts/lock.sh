#!/usr/bin/env bash
# Regenerate requirements.lock: the exact versions (with SHA-256 hashes) of cvgen's
# requirements, dev tools and the `llama` extra's dependencies, resolved by uv for CPython 3.11
# on x86-64 Linux, with torch and its CUDA runtime packages left out (scripts/setup.sh installs
# torch separately, so GPU users keep their build), and llama-cpp-python itself left out too: it
# goes to requirements-llama.lock (the sdist's hash), which setup.sh installs without compiling
# and without resolving anything. Run it after changing a requirement in pyproject.toml, then run
# `scripts/test.sh` (the lock) and `scripts/test.sh --latest` (the newest releases). uv itself is pinned and lives in a venv of
# its own under $CVGEN_CACHE.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
UV_VERSION="0.13.9"
TOOLS="$CACHE/lock-tools"
if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
cd "$REPO"
compile() {
  "$TOOLS/bin/uv" pip compile pyproject.toml --extra dev --extra llama --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --override "$override" --no-emit-package torch --no-emit-package llama-cpp-python "$@"
}
override="$(mktemp)"; draft="$(mktemp)"; trap 'rm -f "$override" "$draft"' EXIT
echo "torch==2.13.0" >"$override"
# torch's CUDA runtime packages are torch's business (the CPU build has none): left out too
compile -o "$draft"
skip=()
for name in $(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$draft" | tr -d '='); do
  skip+=(--no-emit-package "$name")
done
compile --generate-hashes "${skip[@]}" --custom-compile-command "bash scripts/lock.sh" \
  -o requirements.lock
echo "lock: wrote $REPO/requirements.lock ($(grep -c '==' requirements.lock) packages)" >&2
# the binding alone, as the sdist (setup.sh builds it with LLAMA_BUILD=OFF, so no compile)
binding="$(grep -oE 'llama-cpp-python==[0-9.]+' pyproject.toml)"
echo "$binding" >"$draft"
"$TOOLS/bin/uv" pip compile "$draft" --no-deps --no-binary llama-cpp-python --generate-hashes \
  --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --no-annotate --custom-compile-command "bash scripts/lock.sh" -o requirements-llama.lock
echo "lock: wrote $REPO/requirements-llama.lock ($binding, sdist)" >&2
