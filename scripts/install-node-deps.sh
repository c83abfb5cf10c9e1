#!/usr/bin/env bash
# Install the pinned Node development tools (anvil, solcjs) into ./node_modules.
#
# Idempotent: a stamp holding the sha256 of package-lock.json is written after
# a successful `npm ci`; when it matches and the binaries run, nothing is done.
# The tests find the binaries at node_modules/.bin/{anvil,solcjs}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
  echo "install-node-deps: npm is not installed (need Node.js >= 18)" >&2
  exit 1
fi

stamp=node_modules/.strongroom-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && node_modules/.bin/anvil --version >/dev/null 2>&1 \
   && node_modules/.bin/solcjs --version >/dev/null 2>&1; then
  echo "install-node-deps: node_modules is up to date"
  exit 0
fi

npm ci --no-audit --no-fund
node_modules/.bin/anvil --version | head -n 1
node_modules/.bin/solcjs --version
echo "$want" >"$stamp"
