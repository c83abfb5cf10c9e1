"""Treasury movements: sweeps hot -> cold above the ceiling, refill proposals below the floor,
and consolidation of deposits into the hot wallet.

How deposits are consolidated is the chain's :class:`Consolidator` (composition):
per deposit address with gas top-ups for tokens on Ethereum
(``custody.chains.ethereum.treasury``), credited coins spent together on Bitcoin
(``custody.chains.bitcoin.treasury``). Sweeps and consolidations are checked by
the policy engine (an internal-transfer policy: source hot, destination one of
our own whitelisted addresses) and then go through the same
:class:`WithdrawalExecutor` as user withdrawals.
Refills need the cold keys, so here they are a proposal with signed treasury
approvals (``policies.approval`` over ``ApprovalSubject(kind=REFILL, ...)``,
checked by ``policies.quorum.verify_quorum`` against the registered approver
keys); custody.bundles exports the unsigned bundle for the offline signer,
imports the signed one and broadcasts it.

Refill states: proposed --quorum--> awaiting_signer --export--> awaiting_signature
--import--> broadcasting --confirmed--> completed (or failed if it reverts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.access.approvals import (
    ApprovalKind,
    Ballot,
    Signed,
    add_approval,
    approval_rows,
    stored_approvals,
)
from custody.access.approvers import load_registry
from custody.assets import get_asset
from custody.chains.adapter import ChainAdapter
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import ChainTransaction, RefillProposal, WalletLimit
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.wallets.withdrawal_executor import (
    OPEN_STATUSES,
    OutgoingTransfer,
    Purpose,
    TransactionView,
    WithdrawalExecutor,
)
from custody.withdrawals import lifecycle
from custody.withdrawals.lifecycle import Event, Kind
from policies.approval import Approval, ApprovalSubject, SubjectKind, TransferTerms
from policies.policy_document import Allow, PolicyDocument, WalletTemperature
from policies.policy_json import parse_policy_object
from policies.quorum import QuorumRequirement, verify_quorum
from policies.roles import Role
from policies.withdrawal_policy import Destination, WithdrawalContext, evaluate

DEFAULT_REFILL_APPROVALS = 2
SYSTEM_INITIATOR = "system.treasury"
# What refill approvers sign and the offline signer's anchors name: a refill
# is decided by this fixed treasury rule, not by the user withdrawal policy.
REFILL_POLICY_ID = "treasury-refill"
REFILL_POLICY_VERSION = 1
REFILL_RULE = "cold-refill"
REFILL_GROUP = Role.TREASURY.value
PROPOSED, AWAITING_SIGNER = "proposed", "awaiting_signer"
AWAITING_SIGNATURE, BROADCASTING = "awaiting_signature", "broadcasting"
COMPLETED, FAILED = "completed", "failed"
# One refill per asset at a time: a second one would be proposed against a stale balance.
OPEN_REFILL_STATUSES = (PROPOSED, AWAITING_SIGNER, AWAITING_SIGNATURE, BROADCASTING)

INTERNAL_TRANSFER_POLICY = parse_policy_object(
    {
        "schema": "strongroom/withdrawal-policy/v1",
        "id": "internal-transfers",
        "version": 1,
        "description": "Automatic sweeps and consolidations: only from hot keys to our own addresses.",
        "destination_timelock_s": 0,
        "rules": [
            {
                "id": "own-address-only",
                "when": {"destination_in": ["unknown", "timelocked"]},
                "action": {"type": "block", "reason": "internal transfers go only to our own wallets"},
            },
            {
                "id": "hot-to-own",
                "when": {"source_wallet_in": ["hot"], "destination_in": ["whitelisted"]},
                "action": {"type": "allow"},
            },
            {
                "id": "default-block",
                "when": {},
                "action": {"type": "block", "reason": "not an internal transfer"},
            },
        ],
    }
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Hot wallet floor, target and ceiling for one asset."""

    floor_minor: int
    target_minor: int
    ceiling_minor: int


@dataclass(frozen=True, slots=True)
class RefillView:
    """A refill proposal and its approvals."""

    id: str
    asset: str
    amount_minor: int
    destination: str
    status: str
    required_approvals: int
    approvals: list[str]
    proposed_by: str
    terms: TransferTerms | None = None

    @property
    def subject(self) -> ApprovalSubject:
        """Return exactly what approvers of this refill sign."""
        return refill_subject(self.id, self.asset, self.amount_minor, self.destination, self.terms)

    def to_json(self) -> dict[str, object]:
        """Render for the API (with the subject approvers sign)."""
        return {
            "id": self.id,
            "asset": self.asset,
            "amount": str(self.amount_minor),
            "destination": self.destination,
            "status": self.status,
            "required_approvals": self.required_approvals,
            "approvals": self.approvals,
            "proposed_by": self.proposed_by,
            "subject": _subject_json(self.subject),
        }


def refill_subject(
    proposal_id: str, asset: str, amount_minor: int, destination: str, terms: TransferTerms | None = None
) -> ApprovalSubject:
    """Return the approval subject of a refill: kind REFILL under the fixed treasury refill rule."""
    return ApprovalSubject(
        kind=SubjectKind.REFILL,
        subject_id=proposal_id,
        policy_id=REFILL_POLICY_ID,
        policy_version=REFILL_POLICY_VERSION,
        asset=asset,
        amount_minor=amount_minor,
        destination=destination,
        rule_id=REFILL_RULE,
    ).with_terms(terms)


def _subject_json(s: ApprovalSubject) -> dict[str, object]:
    return {
        "kind": s.kind.name.lower(),
        "subject_id": s.subject_id,
        "policy_id": s.policy_id,
        "policy_version": s.policy_version,
        "asset": s.asset,
        "amount_minor": str(s.amount_minor),
        "destination": s.destination,
        "document_sha256": s.document_sha256,
        "rule_id": s.rule_id,
        "chain": s.chain,
        "network": s.network,
        "source_wallet": s.source_wallet,
        "fee_cap_minor": str(s.fee_cap_minor),
    }


# Checks an internal transfer (transfer id, asset, amount, destination) against the treasury policy.
PolicyCheck = Callable[[str, str, int, str], None]


class Consolidator(Protocol):
    """How one chain moves credited deposits into the hot wallet."""

    def consolidate(self, asset: str, min_amount_minor: int, check: PolicyCheck) -> list[TransactionView]:
        """Start consolidation transfers of ``asset`` worth at least ``min_amount_minor`` each.

        Every transfer is passed to ``check`` (the treasury's internal-transfer
        policy) before anything is locked or submitted; return the started records.
        """
        ...


def refill_approvals(session: Session, proposal_id: str) -> list[Approval]:
    """Return the signed approvals stored for a refill, oldest first."""
    return stored_approvals(session, ApprovalKind.REFILL, proposal_id)


class Treasury:
    """Hot/cold rebalancing and deposit consolidation on one chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: ChainAdapter,
        executor: WithdrawalExecutor,
        clock: Callable[[], int],
        consolidator: Consolidator,
        policy: PolicyDocument = INTERNAL_TRANSFER_POLICY,
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._adapter = adapter
        self._executor = executor
        self._consolidator = consolidator
        self._clock = clock
        self._chain = adapter.chain
        self._policy = policy
        # Resolves a refill's terms (asset, rule, cold wallet name); set when cold transfers are configured.
        self.terms: Callable[[str, str, str], TransferTerms | None] | None = None

    def _terms(self, asset: str) -> TransferTerms | None:
        """Return the terms approvers of a refill of ``asset`` bind (call outside a write session)."""
        if self.terms is None:
            return None
        return self.terms(asset, REFILL_RULE, self._wallets.one(self._chain, Temperature.COLD).name)

    # -- limits -----------------------------------------------------------------------------

    def set_limits(self, asset: str, floor_minor: int, target_minor: int, ceiling_minor: int) -> Limits:
        """Set the hot wallet's floor <= target <= ceiling for ``asset``."""
        if not 0 <= floor_minor <= target_minor <= ceiling_minor:
            raise WalletError(
                WalletCode.INVALID_AMOUNT,
                f"limits were floor {floor_minor}, target {target_minor}, ceiling "
                f"{ceiling_minor}; need 0 <= floor <= target <= ceiling",
            )
        with self._sessions.begin() as session:
            row = session.get(WalletLimit, (self._chain, asset))
            if row is None:
                session.add(
                    WalletLimit(
                        chain=self._chain,
                        asset=asset,
                        floor_minor=floor_minor,
                        target_minor=target_minor,
                        ceiling_minor=ceiling_minor,
                    )
                )
            else:
                row.floor_minor, row.target_minor, row.ceiling_minor = (
                    floor_minor,
                    target_minor,
                    ceiling_minor,
                )
        return Limits(floor_minor, target_minor, ceiling_minor)

    def limits(self, asset: str) -> Limits | None:
        """Return the limits of ``asset`` or None."""
        with self._sessions() as session:
            row = session.get(WalletLimit, (self._chain, asset))
            return None if row is None else Limits(row.floor_minor, row.target_minor, row.ceiling_minor)

    # -- sweeps and refills -----------------------------------------------------------------

    def rebalance(self, asset: str) -> TransactionView | RefillView | None:
        """Sweep the surplus above the ceiling to cold, or propose a refill below the floor."""
        limits = self.limits(asset)
        if limits is None:
            return None
        hot = self._wallets.one(self._chain, Temperature.HOT)
        account = self._wallets.ledger.get_account(self._wallets.wallet_account(hot, asset))
        b = account.balance
        # What the hot wallet can still send: posted holdings less outgoing reservations.
        balance = b.debits_posted - b.credits_posted - b.credits_pending
        if self._open(Purpose.SWEEP, asset):
            return None  # one sweep at a time keeps the arithmetic simple and the nonce order clear
        if balance > limits.ceiling_minor:
            return self._sweep(asset, balance - limits.target_minor)
        if balance < limits.floor_minor:
            return self.propose_refill(asset, limits.target_minor - balance, SYSTEM_INITIATOR)
        return None

    def sweep(self, asset: str, amount_minor: int) -> TransactionView:
        """Sweep ``amount_minor`` of ``asset`` from hot to cold now (an operator's request).

        The same transfer as :meth:`rebalance`'s sweep (internal-transfer policy,
        ledger reservation, one open sweep per asset); refused if the hot wallet
        cannot send that much.
        """
        if amount_minor <= 0:
            raise WalletError(WalletCode.INVALID_AMOUNT, f"amount was {amount_minor}, must be positive")
        hot = self._wallets.one(self._chain, Temperature.HOT)
        b = self._wallets.ledger.get_account(self._wallets.wallet_account(hot, asset)).balance
        sendable = b.debits_posted - b.credits_posted - b.credits_pending
        if amount_minor > sendable:
            raise WalletError(WalletCode.INVALID_AMOUNT,
                              f"amount was {amount_minor}, the hot wallet can send {sendable} {asset}")
        if self._open(Purpose.SWEEP, asset):
            raise WalletError(WalletCode.TRANSACTION_CONFLICT, f"a {asset} sweep is already in flight")
        return self._sweep(asset, amount_minor)

    def _sweep(self, asset: str, amount_minor: int) -> TransactionView:
        hot = self._wallets.one(self._chain, Temperature.HOT)
        cold = self._wallets.one(self._chain, Temperature.COLD)
        destination = self._wallets.primary_address(cold.id).address
        self._check_policy(f"sweep-{asset}", asset, amount_minor, destination)
        record_id = f"sweep:{asset}:{self._clock()}"
        return self._executor.submit(
            OutgoingTransfer(
                id=record_id,
                purpose=Purpose.SWEEP,
                asset=asset,
                amount_minor=amount_minor,
                source=hot,
                source_address=self._wallets.primary_address(hot.id),
                destination=destination,
                debit_account_id=self._wallets.wallet_account(cold, asset),
            )
        )

    def propose_refill(
        self,
        asset: str,
        amount_minor: int,
        proposed_by: str,
        required_approvals: int = DEFAULT_REFILL_APPROVALS,
    ) -> RefillView:
        """Record a cold -> hot refill proposal (one open proposal per asset)."""
        if amount_minor <= 0:
            raise WalletError(WalletCode.INVALID_AMOUNT, f"amount was {amount_minor}, must be positive")
        cold = self._wallets.one(self._chain, Temperature.COLD)
        hot = self._wallets.one(self._chain, Temperature.HOT)
        destination = self._wallets.primary_address(hot.id).address
        terms = self._terms(asset)
        with self._sessions.begin() as session:
            open_row = session.scalar(
                select(RefillProposal).where(
                    RefillProposal.chain == self._chain,
                    RefillProposal.asset == asset,
                    RefillProposal.status.in_(OPEN_REFILL_STATUSES),
                )
            )
            if open_row is not None:
                return _refill(session, open_row, terms)
            row = RefillProposal(
                id=f"refill:{asset}:{self._clock()}",
                chain=self._chain,
                asset=asset,
                amount_minor=amount_minor,
                source_wallet_id=cold.id,
                destination=destination,
                status=PROPOSED,
                required_approvals=required_approvals,
                proposed_by=proposed_by,
                created_ms=self._clock(),
                updated_ms=self._clock(),
            )
            session.add(row)
        return RefillView(row.id, row.asset, row.amount_minor, row.destination, row.status,
                          row.required_approvals, [], row.proposed_by, terms)

    def approve_refill(self, proposal_id: str, approver: str, approval: Approval) -> RefillView:
        """Add ``approver``'s signed approval; at quorum the proposal awaits the offline signer.

        ``approval`` is the approver's signed ``policies`` approval of
        :attr:`RefillView.subject`; it is verified against the registered
        approver keys (group treasury, not the proposer, not expired). Only
        signed approvals exist: they are what the offline signer checks.
        While the proposal awaits the signer, further approvals are still
        taken (one whose approval expired can be replaced before export).
        """
        now_ms = self._clock()
        terms = {asset: self._terms(asset) for asset in self._adapter.assets()}
        with self._sessions.begin() as session:
            row = session.scalar(
                select(RefillProposal).where(RefillProposal.id == proposal_id).with_for_update()
            )
            if row is None:
                raise WalletError(
                    WalletCode.PROPOSAL_NOT_FOUND, f"refill proposal {proposal_id!r} does not exist"
                )
            if row.status not in (PROPOSED, AWAITING_SIGNER):
                raise WalletError(WalletCode.PROPOSAL_NOT_PENDING, f"refill {proposal_id} is {row.status}")
            asset_terms = terms.get(row.asset)
            subject = refill_subject(row.id, row.asset, row.amount_minor, row.destination, asset_terms)
            requirement = QuorumRequirement(row.required_approvals, REFILL_GROUP)
            registry = load_registry(session)
            added = add_approval(
                session, Ballot(ApprovalKind.REFILL, row.id, row.proposed_by), approver,
                Signed(approval, lambda approvals: verify_quorum(
                    subject, approvals, registry, requirement, row.proposed_by, now_ms)),
                now_ms=now_ms,
            )
            row.updated_ms = now_ms
            if added.met and row.status == PROPOSED:
                lifecycle.transition(
                    session, Kind.REFILL, row.id, PROPOSED, Event.QUORUM_MET, actor="system", now_ms=now_ms,
                    row=row, details={"approvers": sorted(added.approvers)},
                )
            return _refill(session, row, asset_terms)

    def refills(self) -> list[RefillView]:
        """Return every refill proposal, newest first."""
        terms = {asset: self._terms(asset) for asset in self._adapter.assets()}
        with self._sessions() as session:
            rows = session.scalars(select(RefillProposal).order_by(RefillProposal.created_ms.desc())).all()
            return [_refill(session, row, terms.get(row.asset)) for row in rows]

    # -- consolidation ----------------------------------------------------------------------

    def consolidate(self, asset: str | None = None, min_amount_minor: int = 1) -> list[TransactionView]:
        """Move credited deposits of ``asset`` (default: the native asset) to the hot wallet."""
        return self._consolidator.consolidate(
            asset or self._adapter.native_asset, min_amount_minor, self._check_policy
        )

    # -- helpers ----------------------------------------------------------------------------

    def _open(self, purpose: Purpose, asset: str) -> bool:
        with self._sessions() as session:
            return (
                session.scalar(
                    select(ChainTransaction.id)
                    .where(
                        ChainTransaction.chain == self._chain,
                        ChainTransaction.purpose == purpose.value,
                        ChainTransaction.asset == asset,
                        ChainTransaction.status.in_([s.value for s in OPEN_STATUSES]),
                    )
                    .limit(1)
                )
                is not None
            )

    def _check_policy(self, transfer_id: str, asset: str, amount_minor: int, destination: str) -> None:
        ours = self._wallets.address_index(self._chain)
        asset_info = get_asset(asset)
        assert asset_info is not None
        context = WithdrawalContext(
            withdrawal_id=transfer_id,
            account_id="platform",
            initiator_id=SYSTEM_INITIATOR,
            initiator_roles=frozenset({Role.TREASURY}),
            kyc_tier=3,
            asset=asset,
            asset_decimals=asset_info.decimals,
            amount_minor=amount_minor,
            usd_cents_per_unit=None,
            destination=Destination(destination, 0 if destination.lower() in ours else None),
            source_wallet=WalletTemperature.HOT,
            now_ms=self._clock(),
        )
        decision = evaluate(self._policy, context)
        if not isinstance(decision.action, Allow):
            raise WalletError(
                WalletCode.POLICY_REFUSED,
                f"policy {decision.policy_id} rule {decision.rule_id} refused {transfer_id}",
            )


def _refill(session: Session, row: RefillProposal, terms: TransferTerms | None) -> RefillView:
    return RefillView(
        row.id,
        row.asset,
        row.amount_minor,
        row.destination,
        row.status,
        row.required_approvals,
        [a.approver for a in approval_rows(session, ApprovalKind.REFILL, row.id)],
        row.proposed_by,
        terms,
    )
