"""Settle, then reorganise on the devnet: the platform (wired from the devnet's environment, in
another process's view: over RPC) freezes the owner, raises the alert and books the correction."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from custody import freezes
from custody.access.secret_box import SecretBox
from custody.access.users import Users
from custody.db import make_engine, make_session_factory
from custody.ledger.models import LedgerTransfer
from custody.ledger.service import wall_clock_ms
from custody.security_log import SecurityEvent
from custody.wallets.deposit_watcher import CORRECTION_ACTOR, DepositStatus
from custody.wallets.models import ChainDeposit
from strongroom import migrate
from strongroom.demo import ensure_demo_people
from strongroom.devnet.control import BitcoinControl, EthereumControl
from strongroom.devnet.ethereum import anvil_binary
from strongroom.devnet.runner import Devnet, start
from strongroom.keystores import open_keystore
from strongroom.runtimes.from_env import bitcoin_runtime_from_env, runtime_from_env
from strongroom.settings import Settings

from ..signer.helpers import World

COLD_ADDRESS = "0x000000000000000000000000000000000000C01D"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["anvil", "facade"])
def devnet(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Devnet, Settings]]:
    if request.param == "anvil" and anvil_binary() is None:
        if os.environ.get("STRONGROOM_REQUIRE_ANVIL") == "1":
            pytest.fail("anvil not installed but STRONGROOM_REQUIRE_ANVIL=1")
        pytest.skip("anvil not installed: run scripts/install-node-deps.sh")
    net = start(tmp_path / "data", eth_port=_free_port(), btc_port=_free_port(),
                use_anvil=request.param == "anvil")
    assert net.info.eth_kind == request.param
    try:
        env = {**net.info.environment(), "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
               "STRONGROOM_KEYSTORE_PASSPHRASE": "devnet-test-passphrase",
               "STRONGROOM_ETH_COLD_ADDRESS": COLD_ADDRESS,
               "STRONGROOM_BTC_COLD_DESCRIPTOR": World().descriptor}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings.from_env(dict(os.environ))
        migrate.upgrade(settings.database_url)
        yield net, settings
    finally:
        net.close()


def _deposit(settings: Settings, chain: str) -> ChainDeposit:
    with make_session_factory(make_engine(settings.database_url))() as session:
        [row] = session.scalars(select(ChainDeposit).where(ChainDeposit.chain == chain)).all()
        return row


def _alerts(settings: Settings) -> list[str]:
    with make_session_factory(make_engine(settings.database_url))() as session:
        return [e.subject for e in session.scalars(
            select(SecurityEvent).where(SecurityEvent.action == "deposit.reorged_after_credit"))]


def test_devnet_settle_then_reorg_freezes_alerts_and_corrects_on_both_chains(
    devnet: tuple[Devnet, Settings],
) -> None:
    net, settings = devnet
    ethereum, bitcoin = runtime_from_env(settings), bitcoin_runtime_from_env(settings)
    assert ethereum is not None and bitcoin is not None
    # Verified depositors: compliance credits them (an unknown owner's deposit is held).
    ensure_demo_people(Users(make_session_factory(make_engine(settings.database_url)),
                             SecretBox(open_keystore(settings)), wall_clock_ms))
    eth, btc = EthereumControl(net.info), BitcoinControl(net.info)
    ethereum.watcher.tick()  # a fresh watcher starts at the tip (as the server's first round does)
    bitcoin.watcher.tick()

    eth_address = ethereum.wallets.deposit_address("ethereum-deposits", "alice").address
    eth.fund(eth_address, "USDC", 40_000_000)
    eth.mine(3)
    ethereum.watcher.tick()
    btc_address = bitcoin.wallets.deposit_address("bitcoin-deposits", "bob").address
    btc.fund(btc_address, 250_000)
    btc.mine(3)
    bitcoin.watcher.tick()
    assert _deposit(settings, "ethereum").status == DepositStatus.CREDITED
    assert _deposit(settings, "bitcoin").status == DepositStatus.CREDITED
    user = ethereum.wallets.user_account("alice", "USDC")
    assert ethereum.wallets.ledger.get_account(user).balance.credit_balance_posted == 40_000_000

    eth.reorg(5)  # deeper than the 3 confirmations: the settled deposit's block is replaced
    btc.reorg(5)
    ethereum.watcher.tick()
    bitcoin.watcher.tick()

    for chain, owner in (("ethereum", "alice"), ("bitcoin", "bob")):
        row = _deposit(settings, chain)
        assert row.status == DepositStatus.REVERSED, chain
        with make_session_factory(make_engine(settings.database_url))() as session:
            assert freezes.is_frozen(session, owner)
    assert sorted(_alerts(settings)) == sorted([_deposit(settings, "ethereum").id,
                                                _deposit(settings, "bitcoin").id])
    ledger = ethereum.wallets.ledger
    assert ledger.get_account(user).balance.credit_balance_posted == 0
    bob = bitcoin.wallets.user_account("bob", "BTC")
    assert ledger.get_account(bob).balance.credit_balance_posted == 0
    for runtime in (ethereum, bitcoin):
        report = runtime.reconciler.run()
        assert report.status == "ok", report.to_json()
    with make_session_factory(make_engine(settings.database_url))() as session:
        query = select(LedgerTransfer.actor).where(LedgerTransfer.id.like("%:reversal"))
        actors = set(session.scalars(query))
    assert actors == {CORRECTION_ACTOR}


@pytest.mark.parametrize("devnet", ["anvil", "facade"], indirect=True)
def test_devnet_demo_lands_in_the_platform_ledger(devnet: tuple[Devnet, Settings]) -> None:
    from strongroom.commands.wallets import run_demo

    _, settings = devnet
    lines: list[str] = []
    summary = run_demo(settings, lines.append)
    assert summary == {"ethereum": {"withdrawal": "confirmed", "reconciliation": "ok"},
                       "bitcoin": {"withdrawal": "confirmed", "reconciliation": "ok"}}, lines
    with make_session_factory(make_engine(settings.database_url))() as session:
        ids = list(session.scalars(select(LedgerTransfer.id)))
    assert any(i.startswith("dep:ethereum:") for i in ids) and any(i.startswith("dep:bitcoin:") for i in ids)
    assert any(i.startswith("sweep:") for i in ids) and any(i.startswith("wd:demo-btc-") for i in ids)
    assert not list((settings.data_dir).glob("wallet-demo-*"))  # no throwaway database


@pytest.mark.parametrize("devnet", ["anvil"], indirect=True)
def test_wallet_treasury_commands_set_limits_rebalance_and_refuse_cleanly(
    devnet: tuple[Devnet, Settings],
) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    runner = CliRunner()

    def wallet(*args: str) -> tuple[int, str, str]:
        done = runner.invoke(main, ["wallet", *args, "--chain", "bitcoin"], catch_exceptions=False)
        return done.exit_code, done.stdout, done.stderr

    code, out, _ = wallet("limits", "BTC", "--floor", "100000", "--target", "300000", "--ceiling", "500000")
    assert code == 0 and json.loads(out)["limits"]["target_minor"] == "300000"
    code, _, err = wallet("limits", "BTC", "--floor", "5", "--target", "1", "--ceiling", "9")
    assert code == 1 and json.loads(err)["error"] == "invalid_amount"
    code, _, err = wallet("limits", "BTC", "--floor", "5")
    assert code == 2 and "together" in err
    code, _, err = wallet("sweep", "BTC", "5000")  # the hot wallet holds nothing yet
    assert code == 1 and json.loads(err)["code"] == 4404
    code, out, _ = wallet("rebalance", "BTC")  # below the floor: a refill proposal
    refill = json.loads(out)["result"]
    assert code == 0 and refill["id"].startswith("refill:BTC:") and refill["amount"] == "300000"
    assert refill["subject"]["policy_id"] == "treasury-refill"
    code, out, _ = wallet("list")
    assert {w["temperature"] for w in json.loads(out)} == {"hot", "deposit", "cold"}
    done = runner.invoke(main, ["wallet", "freezes"], catch_exceptions=False)
    assert done.exit_code == 0 and json.loads(done.stdout) == []
