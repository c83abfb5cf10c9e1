"""Bitcoin fixtures: bitcoinlib writes only into a temp dir; a fresh regtest harness per test."""

from __future__ import annotations

import os
import tempfile

import pytest

# bitcoinlib reads BCL_DATA_DIR at import: point it away from the home directory before anything loads it.
os.environ.setdefault("BCL_DATA_DIR", tempfile.mkdtemp(prefix="strongroom-bitcoinlib-"))

from .helpers import BtcHarness, make_btc_harness


@pytest.fixture
def btc(database_url: str, keystore, clock) -> BtcHarness:  # type: ignore[no-untyped-def]
    """A regtest chain with mature faucet coins and the Bitcoin wallets, on SQLite and PostgreSQL."""
    return make_btc_harness(database_url, keystore, clock)
