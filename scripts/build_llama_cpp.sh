#!/usr/bin/env bash
# Build a pinned, CPU-only llama.cpp (the source vendored in the llama-cpp-python 0.3.36 sdist, MIT)
# as shared libraries, once, for both the binaries (llama-completion, llama-server, llama-cli) and
# the Python binding (cvgen[llama], which loads libllama.so from LLAMA_CPP_LIB_PATH), into
# $CVGEN_CACHE/llama.cpp/<commit>-shared/bin. The libraries and tools there find each other
# through RUNPATH $ORIGIN, so the folder works wherever it lies.
#
# `--bench` (or CVGEN_LLAMA_BENCH_TOOLS=1) also builds llama-cvector-generator and
# llama-batched-bench, which scripts/bench.py compares against (an incremental build in the same
# build folder). Idempotent; uses ccache when present; logs to a file, with the configure and
# build seconds. Prints the bin directory on stdout.
set -euo pipefail
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
SDIST_VERSION="0.3.36"
COMMIT="0c1e57098bba43ac29e6e3b677cdceebdd22334f"
SHORT="${COMMIT:0:7}"
PREFIX="$CACHE/llama.cpp/$SHORT-shared"
# the static build of earlier cvgen versions: its source is reused, the folder is left alone
STATIC_SRC="$CACHE/llama.cpp/$SHORT/src"
BIN="$PREFIX/bin"
LOG="$PREFIX/build.log"
PY="${PYTHON:-python3}"
TARGETS=(llama ggml ggml-base ggml-cpu llama-completion llama-server llama-cli llama-quantize)
case "${1:-}" in
  "" | --bench) ;;
  *) echo "build_llama_cpp: unknown argument $1 (the only one is --bench)" >&2; exit 2 ;;
esac
if [ "${1:-}" = "--bench" ] || [ "${CVGEN_LLAMA_BENCH_TOOLS:-0}" = "1" ]; then
  TARGETS+=(llama-cvector-generator llama-batched-bench)
fi
JOBS="${CVGEN_BUILD_JOBS:-$(nproc)}"

# The CPU code is built for this machine (-march=native), but without AMX: a 2-core development
# VM reports AMX in /proc/cpuinfo and runs a lone tile instruction, yet every llama.cpp run there
# died of SIGILL at `tilezero` in ggml's AMX matmul. Where -march=native would enable AMX, ggml-cpu
# is built with every x86 feature -march=native enables except AMX. CVGEN_LLAMA_AMX=native keeps
# plain -march=native (AMX included). The choice is recorded in $PREFIX/CPU, and a cached build
# made for the other choice is rebuilt (only ggml-cpu changes).
native_has_amx() {
  # the macros in a variable first: under pipefail, `cc ... | grep -q` fails whenever grep's
  # early exit kills cc with SIGPIPE, which read an AMX machine as one without AMX
  local macros
  macros=$(echo | "${CC:-cc}" -march=native -dM -E - 2>/dev/null) || return 1
  grep -q '#define __AMX_TILE__ ' <<<"$macros"
}
# the GGML_* switches for what -march=native would enable, AMX left out
native_without_amx() {
  local macros pair
  macros=$(echo | "${CC:-cc}" -march=native -dM -E - 2>/dev/null)
  printf '%s\n' -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  for pair in __SSE4_2__:SSE42 __AVX__:AVX __AVX2__:AVX2 __BMI2__:BMI2 __FMA__:FMA __F16C__:F16C \
      __AVXVNNI__:AVX_VNNI __AVX512F__:AVX512 __AVX512VBMI__:AVX512_VBMI \
      __AVX512VNNI__:AVX512_VNNI __AVX512BF16__:AVX512_BF16; do
    if grep -q "#define ${pair%%:*} " <<<"$macros"; then echo "-DGGML_${pair#*:}=ON"; else echo "-DGGML_${pair#*:}=OFF"; fi
  done
}
case "${CVGEN_LLAMA_AMX:-off}" in
  native) CPU_MODE=native ;;
  off) if [ "$(uname -m)" = x86_64 ] && native_has_amx; then CPU_MODE=native-without-amx; else CPU_MODE=native; fi ;;
  *) echo "build_llama_cpp: CVGEN_LLAMA_AMX=${CVGEN_LLAMA_AMX} (use off or native)" >&2; exit 2 ;;
esac
if [ "$CPU_MODE" = native ]; then CPU_OPTIONS=(-DGGML_NATIVE=ON); else mapfile -t CPU_OPTIONS < <(native_without_amx); fi

have_all() {
  local t
  for t in "${TARGETS[@]}"; do
    case "$t" in
      llama-*) [ -x "$BIN/$t" ] || return 1 ;;
    esac
  done
  [ -f "$BIN/libllama.so" ] && [ -f "$BIN/libggml-base.so" ] || return 1
  # a build from before the CPU file was written is a -march=native one
  [ "$(cat "$PREFIX/CPU" 2>/dev/null || echo native)" = "$CPU_MODE" ]
}
if have_all; then echo "$BIN"; exit 0; fi

mkdir -p "$PREFIX"
echo "build_llama_cpp: building llama.cpp $SHORT (CPU: $CPU_MODE, shared libraries) into $BIN; log: $LOG" >&2
SRC="$PREFIX/src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  rm -rf "$SRC.part"
  if [ -f "$STATIC_SRC/CMakeLists.txt" ]; then
    echo "build_llama_cpp: reusing the source of $STATIC_SRC" >>"$LOG"
    cp -a "$STATIC_SRC" "$SRC.part"
  else
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$tmp" >>"$LOG" 2>&1
    tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
    got=$(cat "$tmp/llama_cpp_python-$SDIST_VERSION/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || echo unknown)
    if [ "$got" != "$COMMIT" ]; then echo "build_llama_cpp: sdist carries llama.cpp $got, expected $COMMIT" >&2; exit 1; fi
    mv "$tmp/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp" "$SRC.part"
    rm -f "$SRC.part/.git"
  fi
  mv "$SRC.part" "$SRC"
fi
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
fi
t0=$SECONDS
# RUNPATH $ORIGIN (not the build tree's absolute path), so the copied bin folder is self-contained
cmake -S "$SRC" -B "$PREFIX/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF "${CPU_OPTIONS[@]}" \
  -DLLAMA_BUILD_COMMIT="$SHORT" "${launcher[@]}" >>"$LOG" 2>&1 \
  || { echo "build_llama_cpp: configure failed; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; }
t1=$SECONDS
cmake --build "$PREFIX/build" -j"$JOBS" --target "${TARGETS[@]}" >>"$LOG" 2>&1 \
  || { echo "build_llama_cpp: build failed; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; }
t2=$SECONDS
echo "build_llama_cpp: configure_s=$((t1 - t0)) build_s=$((t2 - t1)) jobs=$JOBS targets=${TARGETS[*]}" | tee -a "$LOG" >&2
# the tools are thin executables over shared impl libraries (libllama-completion-impl.so, ...):
# the whole folder goes, symlinks kept, swapped in as one piece
rm -rf "$BIN.part" "$BIN.old"
cp -a "$PREFIX/build/bin" "$BIN.part"
if [ -d "$BIN" ]; then mv "$BIN" "$BIN.old"; fi
mv "$BIN.part" "$BIN"
rm -rf "$BIN.old"
echo "$COMMIT" >"$PREFIX/COMMIT"
echo "$CPU_MODE" >"$PREFIX/CPU"
echo "$BIN"
