#!/usr/bin/env bash
# Compile the matching core (exchange/engine/orderbook.py) with mypyc.
#
#   scripts/build-engine.sh          build; the .so files land next to orderbook.py
#   scripts/build-engine.sh clean    remove them (back to the pure-Python core)
#   scripts/build-engine.sh test     run the engine tests compiled, then pure Python
#
# Python imports an extension module in preference to the .py, so with the
# .so files present `exchange.engine.orderbook` is the compiled core; the
# .py stays the source of truth and the fallback. *.so is git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MYPYC="${MYPYC:-$(dirname "$PY")/mypyc}"
ENGINE="$ROOT/exchange/engine"

clean() {
    rm -f "$ENGINE"/orderbook.*.so "$ENGINE"/orderbook__mypyc.*.so
}

build() {
    clean
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    # mypyc writes build/ and its "in place" copy (exchange/engine/*.so)
    # relative to the working directory; keep both out of the repository.
    mkdir -p "$work/exchange/engine"
    (cd "$work" && "$MYPYC" "$ENGINE/orderbook.py" >"$work/mypyc.log" 2>&1) || {
        cat "$work/mypyc.log" >&2
        exit 1
    }
    cp "$work"/exchange/engine/orderbook*.so "$ENGINE/"
    "$PY" -c 'import exchange.engine.orderbook as m; assert m.__file__.endswith(".so"), m.__file__; print("compiled:", m.__file__)'
}

case "${1:-build}" in
    build) build ;;
    clean) clean ;;
    test)
        build
        "$PY" -m pytest "$ROOT/tests/exchange/engine" -q
        clean
        "$PY" -m pytest "$ROOT/tests/exchange/engine" -q
        ;;
    *) echo "usage: $0 [build|clean|test]" >&2; exit 2 ;;
esac
