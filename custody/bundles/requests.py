"""The requests a bundle can pay: cold-source withdrawals and cold -> hot refills.

Each source reads its own record (state, amount, destination, policy, the
approvals that still count under ``policies.quorum.verify_quorum``) and moves
it through the cold states inside the service's transaction:

    withdrawal: approved --export--> awaiting_signature --import--> broadcasting --> completed / failed
    refill:     awaiting_signer --export--> awaiting_signature --import--> broadcasting --> completed / failed

A withdrawal's ledger hold (user_available -> withdrawals_in_flight) is
posted or voided with the bundle's reservation when the chain decides; a
refill has no hold. The reservation's debit side is ``withdrawals_in_flight``
for a withdrawal and the hot wallet's account for a refill, so a confirmed
cold transfer leaves the cold wallet down by the amount and gas, and the
user (or the hot wallet account, up) exactly as on chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.access.approvals import ApprovalKind, approval_rows, signed_approvals
from custody.access.approvers import load_registry
from custody.bundles.chains import BundleChains, ColdRequest
from custody.bundles.codes import BundleCode, BundleError
from custody.bundles.terms import TransferTermsBook
from custody.ledger.entry import AccountKind
from custody.wallets import treasury
from custody.wallets.models import RefillProposal, Wallet, WalletAddress
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.withdrawals import lifecycle
from custody.withdrawals import service as withdrawals
from custody.withdrawals.lifecycle import Event, Kind
from custody.withdrawals.models import WithdrawalRequest
from policies.approval import ApprovalSubject, SubjectKind
from policies.quorum import QuorumRequirement, QuorumResult, verify_quorum
from signer.bundle import PolicyRef

COLD = "cold"
# The first export, and a re-export of a bundle that expired unsigned.
EXPORTABLE = "exportable"
EXPORTED = "exported"
IN_FLIGHT = "in_flight"
FINAL = "final"


@dataclass(frozen=True, slots=True)
class Opened:
    """A request as the bundle service needs it, read inside its transaction."""

    request: ColdRequest
    stage: str  # EXPORTABLE, EXPORTED, IN_FLIGHT or FINAL
    state: str
    chain: str
    source_wallet_id: int
    quorum: QuorumResult | None  # None when the policy required no approvals
    hold_transfer_id: str | None
    outdated_approvals: int = 0  # Stored version 1 approvals: they no longer count.

    @property
    def subject(self) -> ApprovalSubject:
        r = self.request
        return ApprovalSubject(
            kind=r.kind,
            subject_id=r.request_id,
            policy_id=r.policy.policy_id,
            policy_version=r.policy.policy_version,
            asset=r.asset,
            amount_minor=r.amount_minor,
            destination=r.destination,
        ).with_terms(r.terms)


class RequestSource(Protocol):
    """Where bundles come from: one implementation per request kind."""

    kind: SubjectKind

    def open(self, session: Session, request_id: str, now_ms: int, *, lock: bool) -> Opened:
        """Read (and with ``lock``, lock) the request; raise request_not_found / request_not_ready."""
        ...

    def debit_account(self, opened: Opened) -> int:
        """Return the account the reservation debits (where the money goes, in the ledger)."""
        ...

    def move(self, session: Session, request_id: str, stage: str, reason: str, now_ms: int) -> None:
        """Move the request to the state of ``stage`` (EXPORTED, IN_FLIGHT) or to final success/failure."""
        ...


def _wallet(
    session: Session, *, chain: str | None = None, wallet_id: int | None = None
) -> tuple[int, str, str]:
    """Return (id, name, primary address) of the cold wallet of ``chain`` or of wallet ``wallet_id``.

    Read in the caller's session: on SQLite every session is a writer, so a
    second one (the registry's) would wait for this one forever.
    """
    query = select(Wallet)
    if wallet_id is not None:
        query = query.where(Wallet.id == wallet_id)
    else:
        query = query.where(Wallet.chain == chain, Wallet.temperature == Temperature.COLD.value)
    wallets = list(session.scalars(query))
    if len(wallets) != 1:
        raise BundleError(
            BundleCode.CHAIN_NOT_CONFIGURED,
            f"{chain or wallet_id} has {len(wallets)} cold wallets, need exactly 1",
        )
    address = session.scalar(
        select(WalletAddress.address)
        .where(WalletAddress.wallet_id == wallets[0].id)
        .order_by(WalletAddress.id)
    )
    if address is None:
        raise BundleError(BundleCode.CHAIN_NOT_CONFIGURED, f"cold wallet {wallets[0].name} has no address")
    return wallets[0].id, wallets[0].name, address


class WithdrawalSource:
    """Cold-source withdrawals (custody.withdrawals)."""

    kind = SubjectKind.WITHDRAWAL
    _STAGES: dict[str, str] = {
        withdrawals.APPROVED: EXPORTABLE,
        withdrawals.AWAITING_SIGNATURE: EXPORTED,
        withdrawals.BROADCASTING: IN_FLIGHT,
        withdrawals.COMPLETED: FINAL,
        withdrawals.FAILED: FINAL,
    }

    def __init__(self, wallets: WalletRegistry, chains: BundleChains) -> None:
        self._wallets = wallets
        self._chains = chains
        self._terms = TransferTermsBook(chains)

    def open(self, session: Session, request_id: str, now_ms: int, *, lock: bool) -> Opened:
        row = session.get(WithdrawalRequest, request_id, with_for_update=lock)
        if row is None:
            raise BundleError(BundleCode.REQUEST_NOT_FOUND, f"withdrawal {request_id[:80]} does not exist")
        stage = self._STAGES.get(row.state)
        if row.source_wallet != COLD or stage is None:
            raise BundleError(
                BundleCode.REQUEST_NOT_READY,
                f"withdrawal {request_id} is a {row.source_wallet} withdrawal in state {row.state}; "
                "only approved cold withdrawals are exported to the offline signer",
            )
        chain = self._chains.for_asset(row.asset).chain.value
        wallet_id, wallet_name, address = _wallet(session, chain=chain)
        rule = row.rule_id or "allow"
        terms = self._terms.named(row.asset, rule, wallet_name)
        if terms is None:
            raise BundleError(BundleCode.CHAIN_NOT_CONFIGURED, _no_terms(row.asset))
        quorum = None
        outdated = 0
        if row.required_group is not None:
            stored = [r for r in approval_rows(session, ApprovalKind.WITHDRAWAL, row.id) if r.approval]
            approvals = signed_approvals(stored)
            outdated = len(stored) - len(approvals)
            quorum = verify_quorum(
                withdrawals.subject_of(row, terms),
                approvals,
                load_registry(session),
                QuorumRequirement(row.required_count, row.required_group),
                row.username,
                now_ms,
            )
        request = ColdRequest(
            kind=self.kind,
            request_id=row.id,
            initiator_id=row.username,
            policy=PolicyRef(row.policy_id, row.policy_version, rule),
            source_wallet=wallet_name,
            source_address=address,
            asset=row.asset,
            amount_minor=row.amount,
            destination=row.destination,
            approvals=() if quorum is None else quorum.valid,
            terms=terms,
        )
        return Opened(request, stage, row.state, chain, wallet_id, quorum, row.hold_transfer_id, outdated)

    def debit_account(self, opened: Opened) -> int:
        return self._wallets.platform_account(AccountKind.WITHDRAWALS_IN_FLIGHT, opened.request.asset)

    def move(self, session: Session, request_id: str, stage: str, reason: str, now_ms: int) -> None:
        row = session.get(WithdrawalRequest, request_id, with_for_update=True)
        assert row is not None, f"withdrawal {request_id} vanished"
        closing = stage in ("completed", "failed")
        lifecycle.transition(
            session, Kind.WITHDRAWAL, request_id, row.state, _EVENTS[stage], actor="system", now_ms=now_ms,
            values={"closed_by": "system", "close_reason": reason[:256]} if closing else None,
            details={"reason": reason},
        )


class RefillSource:
    """Cold -> hot refills (custody.wallets.treasury)."""

    kind = SubjectKind.REFILL
    _STAGES = {
        treasury.AWAITING_SIGNER: EXPORTABLE,
        treasury.AWAITING_SIGNATURE: EXPORTED,
        treasury.BROADCASTING: IN_FLIGHT,
        treasury.COMPLETED: FINAL,
        treasury.FAILED: FINAL,
    }

    def __init__(self, wallets: WalletRegistry, chains: BundleChains) -> None:
        self._wallets = wallets
        self._terms = TransferTermsBook(chains)

    def open(self, session: Session, request_id: str, now_ms: int, *, lock: bool) -> Opened:
        row = session.get(RefillProposal, request_id, with_for_update=lock)
        if row is None:
            raise BundleError(BundleCode.REQUEST_NOT_FOUND, f"refill {request_id[:80]} does not exist")
        stage = self._STAGES.get(row.status)
        if stage is None:
            raise BundleError(
                BundleCode.REQUEST_NOT_READY,
                f"refill {request_id} is {row.status}; it needs its treasury approvals first",
            )
        wallet_id, wallet_name, address = _wallet(session, wallet_id=row.source_wallet_id)
        terms = self._terms.named(row.asset, treasury.REFILL_RULE, wallet_name)
        if terms is None:
            raise BundleError(BundleCode.CHAIN_NOT_CONFIGURED, _no_terms(row.asset))
        quorum = verify_quorum(
            treasury.refill_subject(row.id, row.asset, row.amount_minor, row.destination, terms),
            treasury.refill_approvals(session, row.id),
            load_registry(session),
            QuorumRequirement(row.required_approvals, treasury.REFILL_GROUP),
            row.proposed_by,
            now_ms,
        )
        request = ColdRequest(
            kind=self.kind,
            request_id=row.id,
            initiator_id=row.proposed_by,
            policy=PolicyRef(treasury.REFILL_POLICY_ID, treasury.REFILL_POLICY_VERSION, treasury.REFILL_RULE),
            source_wallet=wallet_name,
            source_address=address,
            asset=row.asset,
            amount_minor=row.amount_minor,
            destination=row.destination,
            approvals=quorum.valid,
            terms=terms,
        )
        return Opened(request, stage, row.status, row.chain, wallet_id, quorum, None)

    def debit_account(self, opened: Opened) -> int:
        target = self._wallets.address_index(opened.chain).get(opened.request.destination.lower())
        assert target is not None, f"refill destination {opened.request.destination} is not our address"
        return self._wallets.wallet_account(self._wallets.get_by_id(target.wallet_id), opened.request.asset)

    def move(self, session: Session, request_id: str, stage: str, reason: str, now_ms: int) -> None:
        row = session.get(RefillProposal, request_id, with_for_update=True)
        assert row is not None, f"refill {request_id} vanished"
        lifecycle.transition(
            session, Kind.REFILL, request_id, row.status, _EVENTS[stage], actor="system", now_ms=now_ms,
            row=row,
            details={"reason": reason},
        )


# What a bundle stage means to the request's lifecycle (custody.withdrawals.lifecycle).
_EVENTS = {EXPORTED: Event.EXPORT, IN_FLIGHT: Event.SIGNED, "completed": Event.CONFIRM, "failed": Event.FAIL}


def _no_terms(asset: str) -> str:
    return (
        f"the transfer terms of {asset[:16]} (chain, network, fee cap) are unknown: no chain for it is "
        "configured, or its node does not answer"
    )
