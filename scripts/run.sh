#!/usr/bin/env bash
# `make run`: the devnet (anvil, or the in-process chain behind a JSON-RPC facade when anvil
# cannot be installed, plus the Bitcoin regtest server), the demo on it in the platform database,
# then the server configured for it. Ctrl-C stops the server and the devnet (state stays in
# $STRONGROOM_DATA_DIR/devnet, docs/devnet.md).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STRONGROOM_DATA_DIR:=$PWD/var}"
export STRONGROOM_DATA_DIR
mkdir -p "$STRONGROOM_DATA_DIR/devnet"
chmod 700 "$STRONGROOM_DATA_DIR"

devnet_args=(--eth-port "${STRONGROOM_DEVNET_ETH_PORT:-8545}" --btc-port "${STRONGROOM_DEVNET_BTC_PORT:-18443}")
if ! scripts/install-node-deps.sh >"$STRONGROOM_DATA_DIR/devnet/install-node-deps.log" 2>&1; then
  if ! node_modules/.bin/anvil --version >/dev/null 2>&1; then
    echo "run: anvil could not be installed (see $STRONGROOM_DATA_DIR/devnet/install-node-deps.log);" \
         "using the in-process Ethereum chain behind a JSON-RPC facade"
    devnet_args+=(--no-anvil)
  fi
fi

rm -f "$STRONGROOM_DATA_DIR/devnet/devnet.json"
.venv/bin/strongroom devnet up "${devnet_args[@]}" >"$STRONGROOM_DATA_DIR/devnet/devnet.log" 2>&1 &
devnet_pid=$!
trap 'kill "$devnet_pid" 2>/dev/null; wait "$devnet_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ -f "$STRONGROOM_DATA_DIR/devnet/devnet.json" ] && break
  if ! kill -0 "$devnet_pid" 2>/dev/null; then
    cat "$STRONGROOM_DATA_DIR/devnet/devnet.log" >&2
    echo "run: the devnet did not start" >&2
    exit 1
  fi
  sleep 0.2
done
[ -f "$STRONGROOM_DATA_DIR/devnet/devnet.json" ] || { echo "run: the devnet did not start in 60 s" >&2; exit 1; }
eval "$(.venv/bin/strongroom devnet env)"
echo "devnet: $(head -n 1 "$STRONGROOM_DATA_DIR/devnet/devnet.log"); operators: .venv/bin/strongroom devnet mine|fund|reorg"

.venv/bin/strongroom demo
STRONGROOM_EXCHANGE_DEMO_MAKER=${STRONGROOM_EXCHANGE_DEMO_MAKER:-1} .venv/bin/strongroom serve
