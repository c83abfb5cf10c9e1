#!/usr/bin/env bash
# Compile the matching core (exchange/engine/orderbook.py) with Cython.
#
#   scripts/build-engine.sh          build exchange/engine/orderbook_cython.*.so
#   scripts/build-engine.sh clean    remove it (back to the pure-Python core)
#   scripts/build-engine.sh test     build, run the engine tests on the compiled
#                                    core, clean, run them on the pure core
#
# The compiled core is orderbook.py itself, copied to orderbook_cython.py and
# compiled in Cython's pure-Python mode with the C types declared in
# exchange/engine/orderbook_cython.pxd; the .py stays the source of truth and
# the fallback. At import, orderbook.py swaps in the compiled classes when the
# extension exists and was built from the current source (its SHA-256 is
# recorded in the build); STRONGROOM_ENGINE_PURE=1 forces pure Python.
#
# Needs gcc and the Python headers; installs the pinned Cython into the venv
# when it is missing. Build products never land in the repository except the
# .so itself, which is git-ignored.
set -euo pipefail

CYTHON_PIN="Cython==3.3.1"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
ENGINE="$ROOT/exchange/engine"

clean() {
    # Also the products of the earlier mypyc build: an orderbook.*.so would
    # shadow orderbook.py itself.
    rm -f "$ENGINE"/orderbook_cython.*.so "$ENGINE"/orderbook.*.so "$ENGINE"/orderbook__mypyc.*.so
}

ensure_toolchain() {
    # The generated C depends on the Cython version: build with the pinned one.
    if [ "$("$PY" -c 'import Cython; print(Cython.__version__)' 2>/dev/null)" != "${CYTHON_PIN#Cython==}" ]; then
        echo "build-engine: installing $CYTHON_PIN into $(dirname "$PY")" >&2
        "$PY" -m pip install --quiet "$CYTHON_PIN"
    fi
    local include
    include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    if [ ! -f "$include/Python.h" ]; then
        echo "build-engine: $include/Python.h is missing (install the Python headers)" >&2
        exit 1
    fi
    if ! command -v "${CC:-gcc}" >/dev/null; then
        echo "build-engine: no C compiler (${CC:-gcc}) on PATH" >&2
        exit 1
    fi
}

build() {
    ensure_toolchain
    clean
    local work sha
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    # A package skeleton so the extension's module name is
    # exchange.engine.orderbook_cython.
    mkdir -p "$work/exchange/engine"
    touch "$work/exchange/__init__.py" "$work/exchange/engine/__init__.py"
    sha="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ENGINE/orderbook.py")"
    cp "$ENGINE/orderbook.py" "$work/exchange/engine/orderbook_cython.py"
    printf '\nSOURCE_SHA256 = "%s"\n' "$sha" >>"$work/exchange/engine/orderbook_cython.py"
    cp "$ENGINE/orderbook_cython.pxd" "$work/exchange/engine/"
    # annotation_typing=False: only the .pxd gives C types; Python annotations
    # would make Cython reject int/bool subclasses the pure core accepts.
    (cd "$work" && "$PY" -m cython -3 -X annotation_typing=False \
        --module-name exchange.engine.orderbook_cython \
        exchange/engine/orderbook_cython.py -o exchange/engine/orderbook_cython.c \
        >"$work/cython.log" 2>&1) || { cat "$work/cython.log" >&2; exit 1; }
    local ext include cflags
    ext="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
    include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    cflags="-O2 -fPIC -shared -fno-strict-aliasing -DNDEBUG -Wno-unused-function"
    # shellcheck disable=SC2086
    "${CC:-gcc}" $cflags -I"$include" "$work/exchange/engine/orderbook_cython.c" \
        -o "$work/orderbook_cython$ext" 2>"$work/cc.log" || { cat "$work/cc.log" >&2; exit 1; }
    cp "$work/orderbook_cython$ext" "$ENGINE/"
    (cd "$ROOT" && env -u STRONGROOM_ENGINE_PURE "$PY" -c \
        'import exchange.engine.orderbook as m; assert m.CORE == "cython", m.CORE; print("compiled core:", m.OrderBook.__module__)')
}

run_tests() {
    (cd "$ROOT" && "$PY" -m pytest tests/exchange/engine -q -p no:cacheprovider "$@")
}

case "${1:-build}" in
    build) build ;;
    clean) clean ;;
    test)
        build
        STRONGROOM_ENGINE_EXPECT_CORE=cython run_tests
        clean
        STRONGROOM_ENGINE_EXPECT_CORE=pure run_tests
        ;;
    *) echo "usage: $0 [build|clean|test]" >&2; exit 2 ;;
esac
