# Strongroom: the two commands a new user needs are `make run` and `make test`.
.PHONY: run test lint bench bootstrap clean

export STRONGROOM_DATA_DIR ?= $(CURDIR)/var

run: bootstrap
	.venv/bin/strongroom demo
	.venv/bin/strongroom serve

test:
	scripts/test.sh

bootstrap:
	scripts/bootstrap.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/lint-imports && .venv/bin/mypy policies signer exchange/engine && .venv/bin/mypy custody strongroom

bench: bootstrap
	.venv/bin/python benchmarks/ledger_bench.py
	.venv/bin/python benchmarks/engine_bench.py

clean:
	rm -rf .venv var .pytest_cache .mypy_cache .ruff_cache
