"""The deposit watcher's persisted scan cursor: first start, restart, reorg deeper than stored blocks."""

from __future__ import annotations

import pytest

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from strongroom.runtimes.ethereum import build_runtime

from .helpers import COLD_ADDRESS, CONFIRMATIONS, ETH, Harness


def _runtime(chain: EmbeddedChain, url: str, keystore, clock, start_height: int | None = None) -> Harness:  # type: ignore[no-untyped-def]
    """Wallet services as the server builds them: no start height unless configured."""
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine), clock=clock)
    runtime = build_runtime(make_session_factory(engine), ledger, keystore, chain.adapter(), clock,
                            CONFIRMATIONS, start_height=start_height)
    return Harness(chain, runtime, ledger, url, keystore, clock)


@pytest.fixture
def chain() -> EmbeddedChain:
    chain = EmbeddedChain()
    chain.mine(5)  # a chain with history before the wallets exist
    return chain


def test_deposit_before_the_first_watcher_start_is_credited(
    chain: EmbeddedChain, database_url: str, keystore, clock  # type: ignore[no-untyped-def]
) -> None:
    setup = _runtime(chain, database_url, keystore, clock)
    setup.runtime.setup_wallets(COLD_ADDRESS)  # pins the scan cursor at the head
    pinned = setup.runtime.watcher.cursor()
    assert pinned == (chain.web3.eth.block_number, chain.web3.eth.block_number)
    chain.send_eth(setup.deposit_address("alice"), 2 * ETH)
    chain.mine(20)  # the watcher starts well after the deposit
    server = _runtime(chain, database_url, keystore, clock)
    report = server.runtime.watcher.tick()
    assert report.seen == 1 and report.credited == 1
    assert server.user_balance("alice", "ETH") == 2 * ETH
    server.assert_ledger_balanced()


def test_configured_start_height_is_the_safe_point_of_a_new_wallet(
    chain: EmbeddedChain, database_url: str, keystore, clock  # type: ignore[no-untyped-def]
) -> None:
    harness = _runtime(chain, database_url, keystore, clock, start_height=0)  # genesis, as on the devnet
    harness.runtime.setup_wallets(COLD_ADDRESS)
    assert harness.runtime.watcher.cursor() == (0, 0)
    harness.runtime.watcher.tick()
    head = chain.web3.eth.block_number
    assert harness.runtime.watcher.cursor() == (0, head + 1)
    # Configuring another height later changes nothing: the cursor exists.
    later = _runtime(chain, database_url, keystore, clock, start_height=head)
    later.runtime.setup_wallets(COLD_ADDRESS)
    assert later.runtime.watcher.cursor() == (0, head + 1)


def test_restart_resumes_from_the_cursor_without_recrediting(
    chain: EmbeddedChain, database_url: str, keystore, clock  # type: ignore[no-untyped-def]
) -> None:
    first = _runtime(chain, database_url, keystore, clock)
    first.runtime.setup_wallets(COLD_ADDRESS)
    chain.send_eth(first.deposit_address("alice"), ETH)
    chain.mine(4)
    assert first.runtime.watcher.tick().credited == 1
    chain.send_eth(first.deposit_address("alice"), 3 * ETH)  # while the watcher is down
    chain.mine(4)
    restarted = _runtime(chain, database_url, keystore, clock)
    report = restarted.runtime.watcher.tick()
    assert (report.seen, report.credited) == (1, 1)
    assert restarted.runtime.watcher.tick().seen == 0
    assert restarted.user_balance("alice", "ETH") == 4 * ETH
    restarted.assert_ledger_balanced()


def test_reorg_deeper_than_every_stored_block_rescans_from_the_safe_point(
    chain: EmbeddedChain, database_url: str, keystore, clock  # type: ignore[no-untyped-def]
) -> None:
    harness = _runtime(chain, database_url, keystore, clock)
    snapshot = chain.snapshot()  # below the block the cursor will be pinned at
    chain.mine(1)
    harness.runtime.setup_wallets(COLD_ADDRESS)
    start, _ = harness.runtime.watcher.cursor() or (None, None)
    address = harness.deposit_address("bob")
    chain.send_eth(address, ETH)
    harness.runtime.watcher.tick()  # seen, not yet confirmed; blocks start..head stored
    chain.revert(snapshot)  # every stored block is gone, and the one below them too
    chain.send_eth(address, 2 * ETH)  # paid on the new branch
    chain.mine(8)
    report = harness.runtime.watcher.tick()
    assert report.reorg_depth >= 1 and report.voided == 1
    assert harness.runtime.watcher.cursor() == (start, chain.web3.eth.block_number + 1)
    assert harness.user_balance("bob", "ETH") == 2 * ETH  # found although mined before the tip
    harness.assert_ledger_balanced()
