"""Wallet registry, HD derivation, and refusals at the executor's edge."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from embit import bip39
from flask import Flask
from sqlalchemy import select

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.chains.ethereum.keys import ethereum_address_from_xpub, sign_transaction
from custody.db import make_engine, make_session_factory
from custody.wallets import hd
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import Wallet
from custody.wallets.treasury import RefillView
from custody.wallets.wallet import Temperature
from policies.approval import Approval, ApprovalSubject, sign_approval
from policies.results import PolicyError, ResultCode
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes
from strongroom.wiring import build_access_services

from .helpers import ETH, Harness, make_harness

MNEMONIC = "abandon " * 11 + "about"


def test_bip44_derivation_matches_the_standard_test_vector() -> None:
    seed = bip39.mnemonic_to_seed(MNEMONIC.strip())
    xpub = hd.account_xpub(seed, hd.account_path(60))
    assert ethereum_address_from_xpub(xpub, 0) == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"


@pytest.fixture
def harness(sqlite_url: str, keystore, clock) -> Harness:
    return make_harness(EmbeddedChain(), sqlite_url, keystore, clock)


def test_seed_is_stored_only_sealed_and_paths_are_recorded(harness: Harness) -> None:
    address = harness.runtime.wallets.deposit_address("ethereum-deposits", "alice")
    assert address.path == "m/44'/60'/0'/0/0"
    again = harness.runtime.wallets.deposit_address("ethereum-deposits", "alice")
    assert again == address
    assert harness.runtime.wallets.deposit_address("ethereum-deposits", "bob").path == "m/44'/60'/0'/0/1"
    with harness.runtime.wallets._sessions() as session:
        rows = session.scalars(select(Wallet)).all()
    for row in rows:
        if row.temperature == "cold":
            assert row.sealed_seed is None
        else:
            assert row.sealed_seed is not None
            assert base64.b64decode(row.sealed_seed)[:1] != b""


def test_cold_wallet_is_watch_only(harness: Harness) -> None:
    cold = harness.runtime.wallets.one("ethereum", Temperature.COLD)
    with pytest.raises(WalletError) as info:
        sign_transaction(harness.runtime.wallets, cold.id, "m/44'/60'/0'/0/0", {})
    assert info.value.code is WalletCode.WRONG_TEMPERATURE


@pytest.mark.parametrize(("destination", "amount", "code"), [
    ("0x52908400098527886E0F7030069857D2E4169Ee7", ETH, WalletCode.INVALID_DESTINATION),
    ("not-an-address", ETH, WalletCode.INVALID_DESTINATION),
    ("0x52908400098527886E0F7030069857D2E4169EE7", 0, WalletCode.INVALID_AMOUNT),
    ("0x52908400098527886E0F7030069857D2E4169EE7", -5, WalletCode.INVALID_AMOUNT),
])
def test_execute_refuses_bad_destination_or_amount_and_creates_nothing(
        harness: Harness, destination: str, amount: int, code: WalletCode) -> None:
    with pytest.raises(WalletError) as info:
        harness.runtime.executor.execute("bad", "ETH", amount, destination, "hold-x")
    assert info.value.code is code
    assert harness.runtime.executor.recent() == []


def test_execute_same_withdrawal_twice_is_one_record_and_different_body_conflicts(harness: Harness) -> None:
    dest = "0x52908400098527886E0F7030069857D2E4169EE7"
    first = harness.runtime.executor.execute("w9", "ETH", ETH, dest, "hold-9")
    second = harness.runtime.executor.execute("w9", "ETH", ETH, dest.lower(), "hold-9")
    assert first.id == second.id and len(harness.runtime.executor.recent()) == 1
    with pytest.raises(WalletError) as info:
        harness.runtime.executor.execute("w9", "ETH", 2 * ETH, dest, "hold-9")
    assert info.value.code is WalletCode.TRANSACTION_CONFLICT


def _treasury_approvers(harness: Harness, names: tuple[str, ...]) -> dict[str, Ed25519PrivateKey]:
    """Create treasury users with registered approval keys; return their private keys."""
    sessions = make_session_factory(make_engine(harness.url))
    services = build_access_services(sessions, harness.keystore, harness.ledger,
                                    harness.clock)  # type: ignore[arg-type]
    keys = {}
    for name in names:
        services.users.create_user(name, frozenset({Role.TREASURY}), kyc_tier=2)
        keys[name] = Ed25519PrivateKey.generate()
        services.approvers.register(name, f"{name}-k1", ed25519_public_bytes(keys[name]), actor="test")
    return keys


def _approve(harness: Harness, key: Ed25519PrivateKey, name: str, subject: ApprovalSubject) -> Approval:
    now = harness.clock()  # type: ignore[operator]
    return sign_approval(key, approver_id=name, key_id=f"{name}-k1", subject=subject,
                         signed_at_ms=now, expires_at_ms=now + 3_600_000)


def test_refill_proposal_needs_two_distinct_signed_approvals(harness: Harness) -> None:
    keys = _treasury_approvers(harness, ("tina", "tom"))
    treasury = harness.runtime.treasury
    treasury.set_limits("ETH", 5 * ETH, 10 * ETH, 20 * ETH)
    proposal = treasury.rebalance("ETH")
    assert isinstance(proposal, RefillView) and proposal.status == "proposed"
    tina = _approve(harness, keys["tina"], "tina", proposal.subject)
    treasury.approve_refill(proposal.id, "tina", tina)
    again = _approve(harness, keys["tina"], "tina", proposal.subject)
    with pytest.raises(PolicyError) as info:
        treasury.approve_refill(proposal.id, "tina", again)
    assert info.value.code is ResultCode.APPROVER_DUPLICATE
    tom = _approve(harness, keys["tom"], "tom", proposal.subject)
    done = treasury.approve_refill(proposal.id, "tom", tom)
    assert done.status == "awaiting_signer" and sorted(done.approvals) == ["tina", "tom"]


def test_wallet_error_raised_outside_the_wallet_api_answers_its_stable_code(app: Flask) -> None:
    """A WalletError is a CustodyRefusal: any blueprint's route answers with its code, not a 500."""
    from custody.refusal import CustodyRefusal

    refusal = WalletError(WalletCode.PROPOSAL_NOT_PENDING, "refill r-1 is completed")
    assert isinstance(refusal, CustodyRefusal)
    with app.test_request_context("/api/v1/withdrawals"):
        response = app.make_response(app.handle_user_exception(refusal))
    assert response.status_code == 409
    assert response.json == {"code": 4411, "error": "proposal_not_pending",
                             "message": "refill r-1 is completed"}
