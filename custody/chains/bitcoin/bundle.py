"""The Bitcoin cold flow on the platform side: an approved refill -> unsigned PSBT -> signer bundle,
and two signed bundles back -> combined, finalised, checked, broadcast.

``export_refill_bundle`` builds the PSBT (``ColdWallet.prepare_spend`` locks the
coins), wraps it in a :class:`signer.bundle.Bundle` with the treasury approvals
and signs it with the platform key. ``import_signed_bundles`` checks each
signed result against the stored bundle and combines the partial signatures
(``signer.signed.combine_bitcoin``: every signature must verify), then checks
the final transaction itself: exactly the locked inputs, exactly the approved
destination output and amount, change (if any) to the recorded cold change
address, a fee of exactly the prepared fee, every input's witness valid, and
the node's ``testmempoolaccept``. Only then is it handed to the executor
(``adopt_signed``), which reserves the cold wallet in the ledger, broadcasts,
and posts when it confirms.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from embit.transaction import Transaction  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.cold import ColdWallet, SpendStatus
from custody.chains.bitcoin.executor import BitcoinExecutor
from custody.chains.bitcoin.models import BitcoinColdSpend
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.wallet import Temperature
from custody.wallets.withdrawal_executor import OutgoingTransfer, Purpose, TransactionView
from policies.approval import Approval, SubjectKind
from signer.builder import PlatformSigner, build_bundle, platform_sign
from signer.bundle import BitcoinTransaction, Bundle, BundleBody, Chain, Intent, PolicyRef, RequestRef
from signer.results import SignerError
from signer.signed import SignedBundle, combine_bitcoin

REFILL_PURPOSE = "refill"
BUNDLE_LIFETIME_MS = 24 * 3_600_000
DEFAULT_POLICY = PolicyRef("default", 1, "cold-transfer")


@dataclass(frozen=True, slots=True)
class RefillRequest:
    """What the treasury approved: the refill id, who proposed it, amount, destination and fee limits."""

    refill_id: str
    initiator: str
    amount_sat: int
    destination: str
    fee_rate_sat_vb: int
    fee_cap_sat: int
    signer_wallet_name: str = "btc-cold"  # the wallet's name in the signers' trust anchors
    policy: PolicyRef = DEFAULT_POLICY


def record_id(refill_id: str) -> str:
    """Return the outgoing-transaction record id of a refill (its coins are locked to it)."""
    return f"{REFILL_PURPOSE}:{refill_id}"


def refill_body(
    cold: ColdWallet, request: RefillRequest, approvals: Sequence[Approval], now_ms: int
) -> BundleBody:
    """Prepare the PSBT (locking coins) and return the bundle body carrying ``approvals``.

    Call it first with no approvals to get ``body.subject()`` for the
    approvers to sign, then again with their approvals (same PSBT: idempotent).
    """
    spend = cold.prepare_spend(
        request.refill_id,
        record_id(request.refill_id),
        request.destination,
        request.amount_sat,
        request.fee_rate_sat_vb,
        request.fee_cap_sat,
    )
    created_ms = cold.created_ms(request.refill_id)
    return build_bundle(
        bundle_id=f"bnd-{request.refill_id}",
        chain=Chain.BITCOIN,
        network=cold.network_name,
        request=RequestRef(SubjectKind.REFILL, request.refill_id, request.initiator),
        policy=request.policy,
        intent=Intent(
            request.signer_wallet_name, "BTC", spend.destination, spend.amount_sat, request.fee_cap_sat
        ),
        transaction=BitcoinTransaction(spend.psbt),
        approvals=approvals,
        created_at_ms=created_ms,
        expires_at_ms=max(created_ms, now_ms) + BUNDLE_LIFETIME_MS,
    )


def export_refill_bundle(
    sessions: sessionmaker[Session],
    body: BundleBody,
    key_id: str,
    sign: PlatformSigner,
    clock: Callable[[], int],
) -> Bundle:
    """Sign ``body`` with the platform bundle key and store the bundle with its spend."""
    bundle = platform_sign(body, key_id, sign)
    with sessions.begin() as session:
        row = session.get(BitcoinColdSpend, body.request.request_id)
        assert row is not None, "refill_body prepares the spend first"
        if row.status not in (SpendStatus.PREPARED, SpendStatus.EXPORTED):
            raise WalletError(WalletCode.PROPOSAL_NOT_PENDING, f"cold spend {row.id} is {row.status}")
        row.bundle = base64.b64encode(bundle.to_bytes()).decode()
        row.status, row.updated_ms = SpendStatus.EXPORTED, clock()
    return bundle


def import_signed_bundles(
    sessions: sessionmaker[Session],
    cold: ColdWallet,
    executor: BitcoinExecutor,
    refill_id: str,
    signed: Sequence[SignedBundle],
) -> TransactionView:
    """Combine two signers' results, check the transaction is exactly what was approved, broadcast it."""
    with sessions() as session:
        row = session.get(BitcoinColdSpend, refill_id)
        if row is None or row.bundle is None:
            raise WalletError(WalletCode.PROPOSAL_NOT_FOUND, f"no exported bundle for {refill_id!r}")
        spend = (
            row.record_id,
            row.destination,
            row.amount_sat,
            row.fee_sat,
            row.change_address,
            row.wallet_id,
        )
        bundle = Bundle.from_bytes(base64.b64decode(row.bundle))
    record, destination, amount_sat, fee_sat, change_address, wallet_id = spend
    try:
        raw_hex, txid = combine_bitcoin(bundle, signed)
    except SignerError as exc:
        raise WalletError(WalletCode.SIGNED_BUNDLE_REJECTED, f"signed bundles refused: {exc}") from None
    raw = bytes.fromhex(raw_hex)
    problems = check_final(cold, record, raw, destination, amount_sat, fee_sat, change_address)
    reason = cold.adapter.test_accept(raw)
    if reason is not None:
        problems.append(f"the node would refuse it: {reason}")
    if problems:
        raise WalletError(WalletCode.SIGNED_BUNDLE_REJECTED, "; ".join(problems))
    wallets = executor.wallets
    source = wallets.get_by_id(wallet_id)
    view = executor.adopt_signed(
        OutgoingTransfer(
            id=record,
            purpose=Purpose.REFILL,
            asset="BTC",
            amount_minor=amount_sat,
            source=source,
            source_address=wallets.primary_address(source.id),
            destination=destination,
            debit_account_id=wallets.wallet_account(wallets.one(source.chain, Temperature.HOT), "BTC"),
        ),
        raw,
        fee_sat,
    )
    with sessions.begin() as session:
        fresh = session.get(BitcoinColdSpend, refill_id)
        assert fresh is not None
        fresh.status, fresh.txid = SpendStatus.BROADCAST, txid
    return view


def check_final(
    cold: ColdWallet,
    record: str,
    raw: bytes,
    destination: str,
    amount_sat: int,
    fee_sat: int,
    change_address: str | None,
) -> list[str]:
    """Return every way the final transaction differs from the approved spend (empty: it matches)."""
    tx = Transaction.parse(raw)
    problems: list[str] = []
    coins = {(c.txid, c.vout): c for c in cold.locked_coins(record)}
    spent = [(vin.txid.hex(), vin.vout) for vin in tx.vin]
    if sorted(spent) != sorted(coins):
        problems.append(f"inputs {spent} are not exactly the {len(coins)} coins locked for {record}")
    expected = [(cold.adapter.script_of(destination), amount_sat)]
    if change_address is not None:
        change = sum(c.amount_sat for c in coins.values()) - amount_sat - fee_sat
        expected.append((cold.adapter.script_of(change_address), change))
    actual = [(bytes(out.script_pubkey.data), out.value) for out in tx.vout]
    if actual != expected:
        problems.append("outputs differ from the approved destination, amount and change")
    total_in = sum(coins[op].amount_sat for op in spent if op in coins)
    if not problems and total_in - sum(value for _, value in actual) != fee_sat:
        problems.append(f"fee is {total_in - sum(v for _, v in actual)} sat, approved {fee_sat} sat")
    for index, op in enumerate(spent):
        if op in coins:
            coin = coins[op]
            problem = btx.verify_input(
                tx, index, btx.Prevout(coin.amount_sat, cold.adapter.script_of(coin.address))
            )
            if problem is not None:
                problems.append(problem)
    return problems
