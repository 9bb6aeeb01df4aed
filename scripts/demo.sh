#!/usr/bin/env bash
# Set everything up and run the demo: fetch SmolLM2-135M-Instruct (GGUF), generate a pack for
# the `language` and `character_focus` axes, inspect it and print llama.cpp command lines.
# Environment: CVGEN_DEMO_SAMPLES (default 32 per class), CVGEN_DEMO_OUT (default ./demo-pack).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SAMPLES="${CVGEN_DEMO_SAMPLES:-32}"
OUT="${CVGEN_DEMO_OUT:-$REPO/demo-pack}"
VENV="$(bash scripts/setup.sh)"
echo "demo: fetching the model" >&2
MODEL="$(PYTHON="$VENV/bin/python" bash scripts/fetch_model.sh)"
echo "demo: generating $OUT ($SAMPLES samples per class)" >&2
"$VENV/bin/cvgen" generate --model "$MODEL" --axis language --axis character_focus \
  --samples "$SAMPLES" --out "$OUT"
echo
"$VENV/bin/cvgen" inspect "$(ls "$OUT"/*__ornate.gguf)" | head -12
echo
echo "== llama.cpp command lines (language +0.5, character_focus -0.3) =="
"$VENV/bin/cvgen" commands "$OUT" --set language=0.5 --set character_focus=-0.3
