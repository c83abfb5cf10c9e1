#!/usr/bin/env bash
# Set everything up and run every check: lint, import contracts, types, and the
# whole test suite on SQLite and on a throwaway PostgreSQL server.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-deps.sh
scripts/bootstrap.sh
scripts/install-node-deps.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff" && ruff check .
echo "== import contracts" && lint-imports
echo "== mypy (pure cores, strict)" && mypy policies signer exchange/engine
echo "== mypy (platform)" && mypy custody strongroom exchange

pg_dir=""
cleanup() { if [ -n "$pg_dir" ]; then scripts/pg-throwaway.sh stop "$pg_dir"; fi; }
trap cleanup EXIT
if [ -z "${STRONGROOM_TEST_POSTGRES_URL:-}" ]; then
  pg_dir=$(mktemp -d /tmp/strongroom-pg.XXXXXX)
  STRONGROOM_TEST_POSTGRES_URL=$(scripts/pg-throwaway.sh start "$pg_dir")
  export STRONGROOM_TEST_POSTGRES_URL
  export STRONGROOM_REQUIRE_POSTGRES=1
  echo "== throwaway PostgreSQL at $STRONGROOM_TEST_POSTGRES_URL"
fi

# In CI every external dependency must be present: fail rather than skip.
if [ "${CI:-}" = "true" ]; then
  export STRONGROOM_REQUIRE_POSTGRES=1 STRONGROOM_REQUIRE_ANVIL=1
fi

echo "== pytest"
set +e
python -m pytest -n 2 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"

# The matching engine ships a compiled core with a pure-Python fallback: test both.
echo "== matching engine, compiled core"
scripts/build-engine.sh test
