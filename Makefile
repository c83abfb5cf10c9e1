# Strongroom: the two commands a new user needs are `make run` and `make test`.
.PHONY: run test lint bench bootstrap clean

export STRONGROOM_DATA_DIR ?= $(CURDIR)/var
# The demo keeps a random keystore passphrase in a 0600 file in its data dir.
# Production sets STRONGROOM_KEYSTORE_PASSPHRASE(_FILE) from a secrets manager.
export STRONGROOM_KEYSTORE_PASSPHRASE_FILE ?= $(STRONGROOM_DATA_DIR)/demo-keystore-passphrase

# The devnet (docs/devnet.md), the demo on it, then the server configured for it: scripts/run.sh.
# The compiled fast paths (C matching core, audit verifier) are built first, best effort.
run: bootstrap
	scripts/build-fast.sh
	scripts/run.sh

test:
	scripts/test.sh

bootstrap:
	scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/lint-imports && .venv/bin/mypy policies signer exchange/engine && .venv/bin/mypy custody strongroom exchange

# Every benchmark in benchmarks/ on what ships: the C matching core and the audit fast path
# (scripts/build-fast.sh) and the Cython core (built here); peers_bench.py side by side with
# PyPI order books in a throwaway venv.
bench: bootstrap
	scripts/build-fast.sh
	scripts/build-engine.sh
	.venv/bin/python benchmarks/engine_bench.py --repeat 3
	.venv/bin/python benchmarks/peers_bench.py --repeat 3
	.venv/bin/python benchmarks/ledger_bench.py
	.venv/bin/python benchmarks/audit_bench.py
	.venv/bin/python benchmarks/risk_bench.py
	.venv/bin/python benchmarks/simulation_bench.py
	.venv/bin/python benchmarks/market_bench.py
	.venv/bin/python benchmarks/marketdata_bench.py
	.venv/bin/python benchmarks/scaleout_bench.py
	.venv/bin/python benchmarks/scaleout_api_bench.py  # needs STRONGROOM_DATABASE_URL (empty PostgreSQL)
	.venv/bin/python benchmarks/scaleout_ledger_bench.py  # needs STRONGROOM_BENCH_POSTGRES_URL (PostgreSQL admin URL), skips without
	.venv/bin/python benchmarks/shard_settle_bench.py  # needs STRONGROOM_BENCH_POSTGRES_URL (PostgreSQL admin URL), skips without
	.venv/bin/python benchmarks/ledger_settle_bench.py  # SQLite; PostgreSQL too with STRONGROOM_BENCH_POSTGRES_URL (admin URL)
	.venv/bin/python benchmarks/shard_bench.py
	.venv/bin/python benchmarks/shard_feeder_bench.py
	.venv/bin/python benchmarks/auth_path_bench.py  # SQLite; --database-url for PostgreSQL
	.venv/bin/python benchmarks/shard_api_bench.py --configs sync:2x1,gthread:1x8,gthread:2x8  # needs STRONGROOM_BENCH_POSTGRES_URL, skips without
	.venv/bin/python benchmarks/alerts_bench.py
	.venv/bin/python benchmarks/compliance_bench.py

clean:
	rm -rf .venv var .pytest_cache .mypy_cache .ruff_cache
