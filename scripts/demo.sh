#!/usr/bin/env bash
# Set everything up and run the demo: a virtualenv with cvgen, the SmolLM2-135M-Instruct GGUF,
# the pinned llama.cpp (built once, then cached), a pack for the `language` and
# `character_focus` axes, then llama.cpp's greedy completions of one writing prompt at scales
# -1, 0 and +1 for each axis, side by side, and the llama-server command for the pack.
# Environment: CVGEN_DEMO_SAMPLES (default 32 per class), CVGEN_DEMO_OUT (default ./demo-pack).
# Logs of the setup and the build go to ~/.cache/cvgen/logs/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SAMPLES="${CVGEN_DEMO_SAMPLES:-32}"
OUT="${CVGEN_DEMO_OUT:-$REPO/demo-pack}"
LOGS="${CVGEN_CACHE:-$HOME/.cache/cvgen}/logs"
mkdir -p "$LOGS"
START=$SECONDS
step() { printf 'demo [%s] %s (%ds so far)\n' "$1" "$2" "$((SECONDS - START))" >&2; }

step 1/5 "virtualenv and cvgen (log: $LOGS/setup.log)"
VENV="$(bash scripts/setup.sh 2>"$LOGS/setup.log")" || { tail -20 "$LOGS/setup.log" >&2; exit 1; }
step 2/5 "the SmolLM2-135M-Instruct GGUF (log: $LOGS/fetch_model.log)"
MODEL="$(PYTHON="$VENV/bin/python" bash scripts/fetch_model.sh 2>"$LOGS/fetch_model.log")" \
  || { tail -20 "$LOGS/fetch_model.log" >&2; exit 1; }
step 3/5 "llama.cpp (binaries and the library the engine loads): built once (about 21 minutes on 2 cores), then cached"
CVGEN_LLAMA_CPP="$(PYTHON="$VENV/bin/python" bash scripts/build_llama_cpp.sh)"
export CVGEN_LLAMA_CPP
step 4/5 "generating $OUT ($SAMPLES samples per class)"
"$VENV/bin/cvgen" generate --model "$MODEL" --axis language --axis character_focus \
  --samples "$SAMPLES" --out "$OUT" >"$LOGS/generate.log"
head -2 "$LOGS/generate.log" >&2
step 5/5 "llama.cpp (greedy) at scales -1, 0, +1 per axis"
echo
"$VENV/bin/cvgen" compare "$OUT" --model "$MODEL" --scales=-1,0,1 --tokens 64 2>"$LOGS/compare.log"
echo
echo "== llama-server with the pack (language +0.5, character_focus +0.3) =="
"$VENV/bin/cvgen" commands "$OUT" --model-path "$MODEL" --target llama-server \
  --set language=0.5 --set character_focus=0.3
echo
echo "demo: done in $((SECONDS - START)) s; the pack is $OUT (see its README.md); llama.cpp: $CVGEN_LLAMA_CPP" >&2
