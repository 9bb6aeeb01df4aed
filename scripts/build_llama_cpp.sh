#!/usr/bin/env bash
# Build a pinned, CPU-only llama.cpp (the source vendored in the llama-cpp-python 0.3.36 sdist, MIT)
# into $CVGEN_CACHE/llama.cpp/<commit>/bin. Idempotent; uses ccache when present; logs to a file.
# Prints the bin directory on stdout.
set -euo pipefail
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
SDIST_VERSION="0.3.36"
COMMIT="0c1e57098bba43ac29e6e3b677cdceebdd22334f"
SHORT="${COMMIT:0:7}"
PREFIX="$CACHE/llama.cpp/$SHORT"
BIN="$PREFIX/bin"
LOG="$PREFIX/build.log"
PY="${PYTHON:-python3}"
TARGETS=(llama-completion llama-server llama-cli)
JOBS="${CVGEN_BUILD_JOBS:-$(nproc)}"

have_all() { for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || return 1; done; }
if have_all; then echo "$BIN"; exit 0; fi

mkdir -p "$PREFIX"
echo "build_llama_cpp: building llama.cpp $SHORT (CPU) into $BIN; log: $LOG" >&2
SRC="$PREFIX/src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$tmp" >>"$LOG" 2>&1
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  got=$(cat "$tmp/llama_cpp_python-$SDIST_VERSION/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)
  if [ "$got" != "$COMMIT" ]; then echo "build_llama_cpp: sdist carries llama.cpp $got, expected $COMMIT" >&2; exit 1; fi
  rm -rf "$SRC"; mv "$tmp/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp" "$SRC"
  rm -f "$SRC/.git"
fi
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
fi
cmake -S "$SRC" -B "$PREFIX/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_COMMIT="$SHORT" "${launcher[@]}" >>"$LOG" 2>&1
cmake --build "$PREFIX/build" -j"$JOBS" --target "${TARGETS[@]}" >>"$LOG" 2>&1 \
  || { echo "build_llama_cpp: build failed; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; }
mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do cp "$PREFIX/build/bin/$t" "$BIN/$t.part" && mv "$BIN/$t.part" "$BIN/$t"; done
echo "$COMMIT" > "$PREFIX/COMMIT"
echo "$BIN"
