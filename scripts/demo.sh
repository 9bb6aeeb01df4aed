#!/usr/bin/env bash
# Set everything up and run the demo: a virtualenv with cvgen, the SmolLM2-135M-Instruct GGUF,
# the pinned llama.cpp (built once, then cached), a pack for the two shipped axes with the
# strongest measured effect on this model (docs/axes.md), a fast `cvgen eval` of the pack that
# measures each axis's propensity slope and calibrates its suggested scales, then llama.cpp's
# greedy completions of one writing prompt at the suggested negative scale, 0 and the suggested
# positive scale for each axis, side by side under the measured slope, and the llama-server
# command for the pack.
# Environment: CVGEN_DEMO_SAMPLES (default 32 per class), CVGEN_DEMO_OUT (default ./demo-pack).
# Logs of the setup and the build go to ~/.cache/cvgen/logs/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SAMPLES="${CVGEN_DEMO_SAMPLES:-32}"
OUT="${CVGEN_DEMO_OUT:-$REPO/demo-pack}"
# the two axes with the largest measured propensity slope on SmolLM2-135M (docs/axes.md:
# register +0.542, language +0.199 per unit scale, 64 samples per class)
AXIS_1=register
AXIS_2=language
LOGS="${CVGEN_CACHE:-$HOME/.cache/cvgen}/logs"
mkdir -p "$LOGS"
START=$SECONDS
step() { printf 'demo [%s] %s (%ds so far)\n' "$1" "$2" "$((SECONDS - START))" >&2; }

step 1/6 "virtualenv and cvgen (log: $LOGS/setup.log)"
VENV="$(bash scripts/setup.sh 2>"$LOGS/setup.log")" || { tail -20 "$LOGS/setup.log" >&2; exit 1; }
step 2/6 "the SmolLM2-135M-Instruct GGUF (log: $LOGS/fetch_model.log)"
MODEL="$(PYTHON="$VENV/bin/python" bash scripts/fetch_model.sh 2>"$LOGS/fetch_model.log")" \
  || { tail -20 "$LOGS/fetch_model.log" >&2; exit 1; }
step 3/6 "llama.cpp (binaries and the library the engine loads): built once (about 21 minutes on 2 cores), then cached"
CVGEN_LLAMA_CPP="$(PYTHON="$VENV/bin/python" bash scripts/build_llama_cpp.sh)"
export CVGEN_LLAMA_CPP
step 4/6 "generating $OUT for $AXIS_1 and $AXIS_2 ($SAMPLES samples per class)"
"$VENV/bin/cvgen" generate --model "$MODEL" --axis "$AXIS_1" --axis "$AXIS_2" \
  --samples "$SAMPLES" --out "$OUT" >"$LOGS/generate.log"
head -2 "$LOGS/generate.log" >&2
step 5/6 "measuring the pack (fast cvgen eval: propensity slope, KL, suggested scales; log: $LOGS/eval.log)"
"$VENV/bin/cvgen" eval "$OUT" --quiet --scales=-2,-1,0,1,2 --calibration-scales 4 \
  --prompts 6 --probe-pairs 3 --neutral-texts 4 --max-tokens 24 >"$LOGS/eval.log" 2>&1 \
  || { tail -20 "$LOGS/eval.log" >&2; exit 1; }
step 6/6 "llama.cpp (greedy) at each axis's suggested scales (-, 0, +)"
echo
"$VENV/bin/cvgen" compare "$OUT" --model "$MODEL" --scales=-,0,+ --tokens 64 2>"$LOGS/compare.log"
echo
echo "== llama-server with the pack ($AXIS_1 and $AXIS_2 at their suggested positive scales) =="
"$VENV/bin/cvgen" commands "$OUT" --model-path "$MODEL" --target llama-server \
  --set "$AXIS_1=+" --set "$AXIS_2=+"
echo
echo "demo: done in $((SECONDS - START)) s; the pack is $OUT (see its README.md and eval.md); llama.cpp: $CVGEN_LLAMA_CPP" >&2
