#!/usr/bin/env bash
# Print the path of the chromium that the browser tests drive (Playwright launches it; this
# project never runs `playwright install`). $CVGEN_CHROMIUM, default Debian's /usr/bin/chromium;
# when it is missing, install Debian's chromium with apt-get (as root, or with sudo), logging
# apt's output to ~/.cache/cvgen/logs/apt-chromium.log. Progress goes to stderr.
set -euo pipefail
CHROMIUM="${CVGEN_CHROMIUM:-/usr/bin/chromium}"
step() { echo "chromium: $*" >&2; }
if [ ! -x "$CHROMIUM" ]; then
  LOG_DIR="$HOME/.cache/cvgen/logs"
  mkdir -p "$LOG_DIR"
  APT_LOG="$LOG_DIR/apt-chromium.log"
  if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
  elif command -v sudo >/dev/null 2>&1; then
    AS_ROOT=(sudo -n)
  else
    step "$CHROMIUM is missing and this user can neither apt-get (not root) nor sudo;" \
      "install it as root with: apt-get install chromium (or set CVGEN_CHROMIUM)"
    exit 1
  fi
  step "$CHROMIUM is missing; installing Debian's chromium with apt-get (log: $APT_LOG)"
  if ! { "${AS_ROOT[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${AS_ROOT[@]}" apt-get install -y -qq chromium; } \
    >"$APT_LOG" 2>&1; then
    tail -n 20 "$APT_LOG" >&2
    step "apt-get install chromium failed; see $APT_LOG"
    exit 1
  fi
  if [ ! -x "$CHROMIUM" ]; then
    step "apt-get installed chromium, but $CHROMIUM is still missing; set CVGEN_CHROMIUM"
    exit 1
  fi
fi
echo "$CHROMIUM"
