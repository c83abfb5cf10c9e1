#!/usr/bin/env bash
# Build the compiled fast paths that ship with the pure-Python references (best effort):
#   exchange/engine/_ccore.c    -> the C matching core behind FastBook (replay CLI)
#   custody/audit/_fastscan.c   -> the audit verifier's fast path
# Each build records the SHA-256 of its C source and is used only when it matches, so a stale
# build is ignored, never run. Without gcc, the Python headers or libcrypto's headers a build is
# skipped with a warning and the pure-Python code runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
status=0
for module in exchange.engine.fastbook custody.audit.fastscan; do
    if ! out="$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m "$module" build 2>&1)"; then
        echo "build-fast: $module not built, the pure-Python path runs:" >&2
        echo "$out" | tail -5 >&2
        status=1
    else
        echo "build-fast: $out"
    fi
done
# Best effort: never fail the caller.
[ "${BUILD_FAST_STRICT:-0}" = "1" ] && exit "$status"
exit 0
