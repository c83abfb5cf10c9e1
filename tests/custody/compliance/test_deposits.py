"""Deposit compliance: KYC tier caps hold deposits for review, sanctioned senders are quarantined.

End to end on the embedded chain with the real deposit watcher, ledger and
sanctions list, on SQLite and PostgreSQL. Amounts: ETH at 4,000.00 USD.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes
from custody.access.secret_box import SecretBox
from custody.access.users import Users
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.deposits import CREDIT, HELD, QUARANTINED, DepositCompliance
from custody.compliance.models import ComplianceAlert, ComplianceDeposit
from custody.compliance.screening import Screening
from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.security_log import SecurityEvent
from custody.wallets.models import ChainDeposit
from policies.roles import Role
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime

from .conftest import add_sdn_row, list_copy

CONFIRMATIONS = {"ETH": 2, "USDC": 2}
PRICES = {"ETH": 4_000_00, "USDC": 100}
COLD = "0x000000000000000000000000000000000000c01d"
ETH = 10**18


@dataclass
class World:
    chain: EmbeddedChain
    runtime: WalletRuntime
    ledger: Ledger
    gate: DepositCompliance
    sessions: sessionmaker[Session]
    users: Users
    screening: Screening

    def address(self, owner: str) -> str:
        return self.runtime.wallets.deposit_address("ethereum-deposits", owner).address

    def settle(self) -> None:
        for _ in range(4):
            self.runtime.tick()
            self.chain.mine(1)
        self.runtime.tick()

    def balance(self, owner: str, kind: AccountKind = AccountKind.USER_AVAILABLE, asset: str = "ETH") -> int:
        account = self.ledger.find_account(owner, asset, kind)
        return 0 if account is None else account.balance.credit_balance_posted

    def decisions(self, owner: str) -> list[ComplianceDeposit]:
        with self.sessions() as session:
            query = select(ComplianceDeposit).where(ComplianceDeposit.owner == owner)
            return list(session.scalars(query.order_by(ComplianceDeposit.decided_ms)))

    def assert_balanced(self) -> None:
        for asset in ("ETH", "USDC"):
            accounts = [a for a in self.ledger.list_accounts() if a.asset == asset]
            debits = sum(a.balance.debits_posted for a in accounts)
            assert debits == sum(a.balance.credits_posted for a in accounts)


@pytest.fixture
def world(database_url: str, keystore: Any, clock: Any) -> World:
    chain = EmbeddedChain()
    sessions = make_session_factory(make_engine(database_url))
    ledger = Ledger(sessions, clock=clock)
    screening = Screening(sessions, clock)
    gate = DepositCompliance(sessions, ledger, screening, clock, PRICES)
    runtime = build_runtime(sessions, ledger, keystore, chain.adapter(), clock, CONFIRMATIONS,
                            start_height=chain.web3.eth.block_number + 1, gate=gate)
    runtime.setup_wallets(COLD)
    runtime.watcher.tick()
    users = Users(sessions, SecretBox(keystore), clock)
    users.create_user("alice", frozenset({Role.TRADER}), kyc_tier=1, actor="test")  # 10,000 USD / 24h
    users.create_user("officer1", frozenset({Role.COMPLIANCE}), actor="test")
    return World(chain, runtime, ledger, gate, sessions, users, screening)


def test_deposit_within_tier_cap_is_credited_to_available(world: World) -> None:
    world.chain.send_eth(world.address("alice"), 2 * ETH)  # 8,000 USD <= 10,000
    world.settle()
    assert world.balance("alice") == 2 * ETH
    assert [d.decision for d in world.decisions("alice")] == [CREDIT]
    assert world.runtime.reconciler.run().status == "ok"


def test_deposit_over_tier_cap_is_held_not_credited_and_alerts(world: World) -> None:
    world.chain.send_eth(world.address("alice"), 2 * ETH)  # 8,000 USD: credited
    world.chain.send_eth(world.address("alice"), 1 * ETH)  # 12,000 USD in 24h > 10,000: held
    world.settle()
    assert world.balance("alice") == 2 * ETH
    assert world.balance("kyc-hold:alice", AccountKind.USER_HELD) == 1 * ETH
    assert sorted(d.decision for d in world.decisions("alice")) == [CREDIT, HELD]
    with world.sessions() as session:
        alerts = session.scalars(select(ComplianceAlert).where(ComplianceAlert.kind == "kyc_limit")).all()
        assert [a.username for a in alerts] == ["alice"]
        assert session.scalar(select(SecurityEvent.seq).where(
            SecurityEvent.action == "compliance.deposit.held_tier_cap")) is not None
    # Never lost: the coins are on chain, in the deposit wallet, and the ledger says so.
    assert world.runtime.reconciler.run().status == "ok"
    world.assert_balanced()


def test_deposit_cap_window_rolls_after_24h(world: World, clock: Any) -> None:
    world.chain.send_eth(world.address("alice"), 2 * ETH)
    world.settle()
    clock.advance(24 * 3600 * 1000 + 1)
    world.chain.send_eth(world.address("alice"), 2 * ETH)
    world.settle()
    assert world.balance("alice") == 4 * ETH
    assert [d.decision for d in world.decisions("alice")] == [CREDIT, CREDIT]


def test_deposit_to_unregistered_owner_is_held_as_tier_zero(world: World) -> None:
    world.chain.send_eth(world.address("ghost"), ETH // 100)
    world.settle()
    assert world.balance("ghost") == 0
    assert world.balance("kyc-hold:ghost", AccountKind.USER_HELD) == ETH // 100
    assert [(d.decision, d.tier) for d in world.decisions("ghost")] == [(HELD, 0)]


def test_deposit_of_unpriced_asset_is_held(world: World) -> None:
    gate = DepositCompliance(world.sessions, world.ledger, world.screening, lambda: 0, {"ETH": 4_000_00})
    world.runtime.watcher._gate = gate  # the same watcher, without a USDC price
    world.chain.mint(world.address("alice"), 10 * 10**6)
    world.settle()
    assert world.balance("alice", asset="USDC") == 0
    assert world.balance("kyc-hold:alice", AccountKind.USER_HELD, asset="USDC") == 10 * 10**6
    assert "no USD price" in world.decisions("alice")[0].reason


def test_deposit_release_by_officer_moves_hold_to_available_once(world: World) -> None:
    world.chain.send_eth(world.address("alice"), 3 * ETH)  # 12,000 USD > 10,000: held
    world.settle()
    held = world.decisions("alice")[0]
    released = world.gate.release("officer1", held.deposit_id, "source of funds documented")
    assert released["released_by"] == "officer1"
    assert world.balance("alice") == 3 * ETH
    assert world.balance("kyc-hold:alice", AccountKind.USER_HELD) == 0
    with pytest.raises(ComplianceError) as again:
        world.gate.release("officer1", held.deposit_id, "twice")
    assert again.value.code is ComplianceCode.DEPOSIT_NOT_RELEASABLE
    assert world.balance("alice") == 3 * ETH
    assert world.runtime.reconciler.run().status == "ok"


def test_deposit_release_before_confirmation_is_refused_and_changes_nothing(world: World) -> None:
    world.chain.send_eth(world.address("alice"), 3 * ETH)
    world.runtime.tick()  # seen, not yet confirmed
    held = world.decisions("alice")[0]
    assert held.decision == HELD
    with pytest.raises(ComplianceError) as refused:
        world.gate.release("officer1", held.deposit_id, "too early")
    assert refused.value.code is ComplianceCode.DEPOSIT_NOT_RELEASABLE
    assert world.balance("alice") == 0
    assert world.decisions("alice")[0].released_ms is None


def test_deposit_release_of_own_or_unknown_or_credited_deposit_is_not_found(world: World) -> None:
    world.users.create_user("officer2", frozenset({Role.COMPLIANCE}), actor="test")
    world.chain.send_eth(world.address("officer2"), ETH)  # tier 0: held
    world.chain.send_eth(world.address("alice"), ETH)  # credited
    world.settle()
    own = world.decisions("officer2")[0]
    credited = world.decisions("alice")[0]
    for officer, deposit_id in (("officer2", own.deposit_id), ("officer1", "dep:nope"),
                                ("officer1", credited.deposit_id)):
        with pytest.raises(ComplianceError) as refused:
            world.gate.release(officer, deposit_id, "because")
        assert refused.value.code is ComplianceCode.DEPOSIT_NOT_FOUND
    with pytest.raises(ComplianceError) as blank:
        world.gate.release("officer1", own.deposit_id, "   ")
    assert blank.value.code is ComplianceCode.DEPOSIT_INPUT_INVALID
    assert world.balance("officer2") == 0


def test_deposit_from_sanctioned_sender_is_quarantined_frozen_and_cased(world: World, tmp_path: Path) -> None:
    sender = to_checksum_address(world.chain.web3.eth.accounts[1])
    listed = list_copy(tmp_path)
    add_sdn_row(listed, f'90099,"QUARANTINE, Test","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
                        f'"Digital Currency Address - ETH {sender}; FABRICATED."')
    world.screening.load_directory(listed, actor="test")
    world.chain.send_eth(world.address("alice"), ETH // 10, sender=sender)  # small: under the tier cap
    world.settle()
    assert world.balance("alice") == 0
    assert world.balance("quarantine:alice", AccountKind.USER_HELD) == ETH // 10
    [decision] = world.decisions("alice")
    assert decision.decision == QUARANTINED
    with world.sessions() as session:
        alert = session.get(ComplianceAlert, decision.alert_id)
        assert alert is not None and alert.kind == "sanctions" and alert.score == 100
        assert alert.subject == f"deposit:{decision.deposit_id}"
        assert freezes.is_frozen(session, "alice")
    with pytest.raises(ComplianceError) as refused:
        world.gate.release("officer1", decision.deposit_id, "looks fine")
    assert refused.value.code is ComplianceCode.DEPOSIT_NOT_RELEASABLE
    assert world.balance("alice") == 0
    assert world.runtime.reconciler.run().status == "ok"
    world.assert_balanced()


def test_deposit_sender_listed_later_is_rescreened_cased_and_frozen_once(
        world: World, tmp_path: Path) -> None:
    sender = to_checksum_address(world.chain.web3.eth.accounts[2])
    world.screening.load_directory(list_copy(tmp_path, "before"), actor="test")
    world.chain.send_eth(world.address("alice"), ETH // 10, sender=sender)
    world.settle()
    [decision] = world.decisions("alice")
    assert decision.decision == CREDIT and decision.sender.lower() == sender.lower()
    assert world.balance("alice") == ETH // 10
    with world.sessions() as session:
        assert not freezes.is_frozen(session, "alice")
    listed = list_copy(tmp_path, "after")
    # Listed in lower case: the match is on the normalised address, not the spelling.
    add_sdn_row(listed, f'90098,"LATER, Listed","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
                        f'"Digital Currency Address - ETH {sender.lower()}; FABRICATED."')
    result = world.screening.load_directory(listed, actor="test")
    assert result.created
    subject = f"deposit:{decision.deposit_id}"
    with world.sessions() as session:
        [alert] = session.scalars(select(ComplianceAlert).where(ComplianceAlert.subject == subject)).all()
        assert alert.id in result.new_alerts
        assert alert.kind == "sanctions" and alert.score == 100 and alert.username == "alice"
        assert alert.case_id is not None
        assert freezes.is_frozen(session, "alice")
    assert world.balance("alice") == ETH // 10  # credited before the listing: booked, frozen in place
    assert world.screening.rescreen_all() == []  # re-run: nothing new
    with world.sessions() as session:
        same = session.scalars(select(ComplianceAlert).where(ComplianceAlert.subject == subject)).all()
        assert len(same) == 1
    world.assert_balanced()


def test_deposit_rescreen_leaves_unlisted_senders_alone(world: World, tmp_path: Path) -> None:
    world.chain.send_eth(world.address("alice"), ETH // 10, sender=world.chain.web3.eth.accounts[3])
    world.settle()
    listed = list_copy(tmp_path)
    other = "0x00000000000000000000000000000000000bad01"
    add_sdn_row(listed, '90097,"OTHER, Someone","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
                        f'"Digital Currency Address - ETH {other}; FABRICATED."')
    world.screening.load_directory(listed, actor="test")
    with world.sessions() as session:
        assert not freezes.is_frozen(session, "alice")
        assert session.scalars(select(ComplianceAlert).where(
            ComplianceAlert.subject.like("deposit:%"))).all() == []


def test_deposit_decision_survives_reorg_and_reapplication(world: World) -> None:
    snapshot = world.chain.snapshot()
    world.chain.send_eth(world.address("alice"), 3 * ETH)  # held
    world.runtime.tick()
    world.chain.revert(snapshot)
    world.chain.mine(2)
    world.runtime.tick()  # the deposit's block is gone: voided
    with world.sessions() as session:
        [row] = session.scalars(select(ChainDeposit)).all()
        assert row.status == "voided"
    assert world.balance("kyc-hold:alice", AccountKind.USER_HELD) == 0
    assert [d.decision for d in world.decisions("alice")] == [HELD]
    world.assert_balanced()


def test_deposit_concurrent_decisions_cannot_both_fit_under_one_cap(world: World) -> None:
    """Two deposits decided at once (two chains' watchers) that together exceed the cap: one is held."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def decide(index: int) -> None:
        deposit = ChainDeposit(id=f"dep:test:{index}", chain="test", asset="ETH", txid=f"0x{index}",
                               log_index=-1, address="0x", owner="alice", wallet_id=1,
                               amount_minor=2 * ETH, block_height=1, block_hash="0x", attempt=0,
                               status="seen", ledger_synced=False, updated_ms=0)  # 8,000 USD each
        try:
            barrier.wait(timeout=60)
            with world.sessions.begin() as session:
                world.gate.on_seen(session, deposit, "", 1_767_225_600_000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(d.decision for d in world.decisions("alice")) == [CREDIT, HELD]
