"""Background jobs: pending holds expire and checkpoints are written when due."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from strongroom.jobs import Job, JobRunner, server_jobs


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _hold(app: Flask, timeout_s: int) -> int:
    ledger = app.extensions["strongroom.ledger"]
    wallet = ledger.create_account("platform", "USDC", AccountKind.HOT_WALLET)
    user = ledger.create_account("alice", "USDC", AccountKind.USER_AVAILABLE)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(TransferRequest(id="fund", debit_account=wallet.id, credit_account=user.id, amount=100))
    ledger.transfer(TransferRequest(id="hold", kind=TransferKind.PENDING, debit_account=user.id,
                                    credit_account=held.id, amount=60, timeout_s=timeout_s))
    return user.id


def test_server_jobs_expire_holds_and_write_checkpoints_when_due(app: Flask, clock) -> None:  # type: ignore[no-untyped-def]
    user = _hold(app, timeout_s=10)
    ledger = app.extensions["strongroom.ledger"]
    ticks = Ticks()
    runner = JobRunner(server_jobs(app, checkpoint_every_entries=2), ticks)
    due: dict[str, float] = {}
    before_expiry, _ = ledger.head()
    runner.run_due(due)
    assert ledger.balance(user).credit_balance_available == 40
    clock.advance(10_000)
    ticks.now += 5.0
    runner.run_due(due)
    assert ledger.balance(user).credit_balance_available == 100
    from custody.api.audit import audit

    with app.app_context():
        latest = audit().latest_checkpoint()
    # Written on the first tick, before the expiry.
    assert latest is not None and latest.last_seq == before_expiry


def test_failing_job_is_logged_and_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    runner = JobRunner([Job("bad", 1.0, boom), Job("good", 1.0, lambda: ran.append("good"))], Ticks())
    with caplog.at_level(logging.ERROR):
        runner.run_due({})
    assert ran == ["good"]
    assert "background job bad failed" in caplog.text


def test_server_jobs_include_wallet_rounds_only_when_a_chain_is_configured(app: Flask) -> None:
    names = [job.name for job in server_jobs(app)]
    assert names == ["expire_pending", "ledger_checkpoint", "withdrawal_hold_sweep", "compliance_monitoring",
                     "withdrawal_release"]


def test_server_jobs_tick_each_chain_and_cold_bundles_once(  # type: ignore[no-untyped-def]
    database_url: str, clock, keystore, tmp_path
) -> None:
    from custody.chains.bitcoin.adapter import BitcoinAdapter
    from custody.chains.bitcoin.network import network
    from custody.chains.bitcoin.regtest import RegtestChain
    from custody.chains.ethereum.devchain import EmbeddedChain
    from custody.db import make_engine, make_session_factory
    from custody.ledger.service import Ledger
    from strongroom.app import create_app
    from strongroom.runtimes.bitcoin import build_bitcoin_runtime
    from strongroom.runtimes.ethereum import build_runtime
    from strongroom.settings import Settings

    sessions = make_session_factory(make_engine(database_url))
    ledger = Ledger(sessions, clock=clock)
    eth = build_runtime(sessions, ledger, keystore, EmbeddedChain().adapter(), clock, {"ETH": 1, "USDC": 1})
    adapter = BitcoinAdapter(RegtestChain(), network("regtest"))
    btc = build_bitcoin_runtime(sessions, ledger, keystore, adapter, clock, {"BTC": 1})
    app = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore,
                      "CHAIN_RUNTIMES": {"ethereum": eth, "bitcoin": btc}},
                     settings=Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        jobs = {job.name: job for job in server_jobs(app)}
        assert list(jobs) == ["expire_pending", "ledger_checkpoint", "withdrawal_hold_sweep",
                              "compliance_monitoring", "withdrawal_release", "cold_bundles",
                              "wallet_tick", "withdrawal_dispatch", "wallet_tick_bitcoin",
                              "withdrawal_dispatch_bitcoin"]
        assert jobs["cold_bundles"].run() == []  # nothing exported yet: a round does nothing
    finally:
        app.extensions["strongroom.engine"].dispose()
