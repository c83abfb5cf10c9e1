"""Withdrawal requests: hold the funds, let the policy decide, collect signed approvals.

State machine (docs/api.md draws it; custody.withdrawals.lifecycle holds the table and is
the only writer of the state column)::

    create --block--> blocked                      (hold voided)
           --allow--> approved                     (then custody.wallets.dispatch)
           --require_approvals--> pending_approval --quorum--> approved
           --delay--> delayed --release_due--> (evaluated again, delay served)
    approved (cold source) --bundle export--> awaiting_signature --signed bundle imported-->
           broadcasting --> completed / failed                   (custody.bundles)
    pending_approval / delayed --cancel (owner)--> cancelled   (hold voided)
    pending_approval / delayed --reject (approver)--> rejected (hold voided)

The ledger hold is placed first, under an id derived from the withdrawal id,
so a retry never holds twice; the withdrawal row and its security-log event
are then written in one transaction, with the user's row locked so two
concurrent requests of one user cannot both pass a velocity limit. If that
transaction fails the hold is voided again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from custody import freezes, security_log, withdrawal_halts
from custody.access.approvals import ApprovalKind, Ballot, Signed, add_approval, approval_rows
from custody.access.approvers import load_registry
from custody.access.errors import AccessCode, AccessError
from custody.access.models import User
from custody.access.policy_store import PolicyStore, active_policy
from custody.access.users import UserView
from custody.assets import get_asset
from custody.ledger.codes import LedgerError
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.models import LedgerAccount, LedgerTransfer
from custody.ledger.posting import REFERENCE_MAX_LEN, TransferRequest
from custody.ledger.service import Ledger, ResultStatus
from custody.withdrawals import lifecycle
from custody.withdrawals.address import canonical_destination
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from custody.withdrawals.lifecycle import Event, Kind
from custody.withdrawals.lifecycle import WithdrawalState as State
from custody.withdrawals.models import WhitelistAddress, WithdrawalRequest
from policies.approval import Approval, ApprovalSubject, SubjectKind, TransferTerms
from policies.identifier import MAX_ADDRESS_CHARS, is_identifier
from policies.policy_document import Allow, Delay, PolicyDocument, RequireApprovals, WalletTemperature
from policies.price import usd_cents
from policies.quorum import QuorumRequirement, verify_quorum
from policies.velocity import MAX_VELOCITY_WINDOW_S, MS_PER_S, PastWithdrawal, velocity_totals
from policies.withdrawal_policy import Decision, Destination, WithdrawalContext, evaluate

log = logging.getLogger(__name__)

PLATFORM_OWNER = "platform"
# The states and every move between them: custody.withdrawals.lifecycle.
PENDING_APPROVAL, DELAYED, APPROVED = State.PENDING_APPROVAL, State.DELAYED, State.APPROVED
REJECTED, CANCELLED, BLOCKED = State.REJECTED, State.CANCELLED, State.BLOCKED
# On chain (custody.wallets.dispatch): handed to the hot wallet, then final.
BROADCASTING, COMPLETED, FAILED = State.BROADCASTING, State.COMPLETED, State.FAILED
# Cold source (custody.bundles): an unsigned bundle is out at the offline signer.
AWAITING_SIGNATURE = State.AWAITING_SIGNATURE
OPEN_STATES = frozenset({PENDING_APPROVAL, DELAYED})
# A delayed withdrawal's release time while it waits for the travel rule's counterparty VASP
# (custody/compliance/trp.py): never due until the counterparty's approval replaces it.
TRAVEL_RULE_WAIT_MS = 2**62
# Withdrawals that count toward velocity limits: requested and not refused, withdrawn or
# failed on chain (a failed transaction returned the funds).
COUNTED_STATES = frozenset({PENDING_APPROVAL, DELAYED, APPROVED, AWAITING_SIGNATURE, BROADCASTING, COMPLETED})
# Withdrawals whose hold has been (or must be) released: no transaction will ever be sent.
RELEASED_STATES = frozenset({REJECTED, CANCELLED, BLOCKED})
MAX_LIST = 500
HOLD_SUFFIX = ":hold"
WITHDRAWAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
POLICY_ACTOR = "service:withdrawal-policy"
SWEEP_ACTOR = "service:withdrawal-sweep"
# A hold with no withdrawal is released once it is this old. Creation writes both in one
# transaction, so such holds only come from before that (or from a hand-made ledger entry);
# the grace keeps the sweep well clear of any transaction still in flight.
ORPHAN_HOLD_GRACE_MS = 5 * 60 * 1000
SWEEP_BATCH_MAX = 100
MAX_RELEASE_BATCH = 100
MAX_LABEL_CHARS = 128
# Resolves the terms (chain, network, source wallet, fee cap) approvers of a cold withdrawal of an
# asset under a rule also bind; set by the composition root when cold transfers are configured.
TermsResolver = Callable[[Session, str, str], TransferTerms | None]
# Screens a destination (session, username, asset, address, subject such as "withdrawal:<id>") in the
# caller's transaction and returns why it is refused, or None; it may alert and freeze in that
# transaction. Set by the composition root (custody.compliance.screening, docs/compliance.md).
DestinationScreen = Callable[[Session, str, str, str, str], str | None]
# Compliance's travel-rule check (custody.compliance.travel_rule.TravelRule.check): session, username,
# withdrawal id, asset, amount, destination, USD cents (None: unpriced), the request's data; raises to refuse.
# Returns True when the withdrawal must wait for the beneficiary VASP's approval (None: it need not).
TravelRuleCheck = Callable[
    [Session, str, str, str, int, str, int | None, Mapping[str, Any] | None], bool | None]
COMPLIANCE_ACTOR = "compliance"


@dataclass(frozen=True, slots=True)
class WithdrawalInput:
    """What a user asks for; validated by `Withdrawals.create`."""

    asset: str
    amount_minor: int
    destination: str
    source_wallet: str = WalletTemperature.HOT.value
    # IVMS101 originator/beneficiary data (docs/compliance.md), required at the travel-rule threshold.
    travel_rule: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class WithdrawalView:
    """A withdrawal, its decision and its approvals, as the API and CLI show it."""

    row: WithdrawalRequest
    approvals: tuple[tuple[str, str, str], ...]  # (approval_id, approver, key_id)
    terms: TransferTerms | None = None

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def state(self) -> str:
        return self.row.state

    @property
    def subject(self) -> ApprovalSubject:
        return subject_of(self.row, self.terms)

    def decision(self) -> dict[str, Any]:
        decision: dict[str, Any] = json.loads(self.row.decision)
        return decision

    def to_json(self) -> dict[str, Any]:
        r = self.row
        return {
            "id": r.id,
            "username": r.username,
            "asset": r.asset,
            "amount": str(r.amount),
            "destination": r.destination,
            "source_wallet": r.source_wallet,
            "state": r.state,
            "policy": {
                "id": r.policy_id,
                "version": r.policy_version,
                "digest": r.policy_digest,
                "rule_id": r.rule_id,
            },
            "required": (
                {"count": r.required_count, "group": r.required_group} if r.required_group else None
            ),
            "release_at_ms": r.release_at_ms,
            "hold_transfer_id": r.hold_transfer_id,
            "approvals": [{"approval_id": a, "approver": u, "key_id": k} for a, u, k in self.approvals],
            "subject": subject_json(subject_of(r, self.terms)),
            "decision": self.decision(),
            "created_ms": r.created_ms,
            "updated_ms": r.updated_ms,
            "closed_by": r.closed_by,
            "close_reason": r.close_reason,
        }


@dataclass(frozen=True, slots=True)
class WhitelistView:
    id: int
    username: str
    asset: str
    address: str
    label: str
    added_ms: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "username": self.username,
            "asset": self.asset,
            "address": self.address,
            "label": self.label,
            "added_ms": self.added_ms,
        }


class Withdrawals:
    """Whitelists and withdrawal requests."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ledger: Ledger,
        policies: PolicyStore,
        clock: Callable[[], int],
        prices_usd_cents: Mapping[str, int],
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._policies = policies
        self._clock = clock
        self._prices = dict(prices_usd_cents)
        self.terms: TermsResolver | None = None
        self.screen: DestinationScreen | None = None
        self.travel_rule: TravelRuleCheck | None = None

    def _terms(self, session: Session, row: WithdrawalRequest) -> TransferTerms | None:
        if self.terms is None or row.source_wallet != WalletTemperature.COLD.value or not row.rule_id:
            return None
        return self.terms(session, row.asset, row.rule_id)

    # -- whitelist ---------------------------------------------------------------------------

    def add_whitelist(self, username: str, asset: str, address: str, label: str = "") -> WhitelistView:
        """Whitelist ``address`` for ``asset``; re-adding a removed one restarts its timelock."""
        _check_asset(asset)
        _check_address(address)
        address = canonical_destination(asset, address)
        if len(label) > MAX_LABEL_CHARS:
            raise WithdrawalError(
                WithdrawalCode.ADDRESS_INVALID, f"label must be at most {MAX_LABEL_CHARS} chars"
            )
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.scalar(
                select(WhitelistAddress).where(
                    WhitelistAddress.username == username,
                    WhitelistAddress.asset == asset,
                    WhitelistAddress.address == address,
                )
            )
            if row is not None and row.removed_ms is None:
                raise WithdrawalError(WithdrawalCode.WHITELIST_EXISTS, f"{address} is already whitelisted")
            if row is None:
                row = WhitelistAddress(username=username, asset=asset, address=address)
                session.add(row)
            row.label, row.added_ms, row.removed_ms = label, now_ms, None
            session.flush()
            if self.screen is not None:
                # A listed address is kept on file (the case needs it); its owner is frozen.
                self.screen(session, username, asset, address, f"whitelist:{row.id}")
            security_log.append(
                session,
                at_ms=now_ms,
                actor=username,
                action="whitelist.add",
                subject=address,
                details={"asset": asset, "id": row.id},
            )
            return _whitelist_view(row)

    def list_whitelist(self, username: str) -> list[WhitelistView]:
        with self._sessions() as session:
            rows = session.scalars(
                select(WhitelistAddress)
                .where(WhitelistAddress.username == username, WhitelistAddress.removed_ms.is_(None))
                .order_by(WhitelistAddress.id)
            )
            return [_whitelist_view(r) for r in rows]

    def remove_whitelist(self, username: str, entry_id: int) -> WhitelistView:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(WhitelistAddress, entry_id)
            if row is None or row.username != username or row.removed_ms is not None:
                raise WithdrawalError(
                    WithdrawalCode.WHITELIST_NOT_FOUND, f"{username} has no whitelist entry {entry_id}"
                )
            row.removed_ms = now_ms
            security_log.append(
                session,
                at_ms=now_ms,
                actor=username,
                action="whitelist.remove",
                subject=row.address,
                details={"asset": row.asset, "id": row.id},
            )
            return _whitelist_view(row)

    # -- requests ----------------------------------------------------------------------------

    def create(self, user: UserView, request: WithdrawalInput, withdrawal_id: str) -> WithdrawalView:
        """Hold the funds and decide; return the withdrawal (state ``blocked`` if refused).

        One database transaction writes the ledger hold, the withdrawal row and the
        security-log event (and, if the policy blocks, the hold's void): a crash or a
        refusal anywhere leaves none of them. A retry, or a concurrent duplicate, with
        the same ``withdrawal_id`` returns the one withdrawal: the row's primary key
        and the hold's transfer id make a second one impossible, and nothing here
        ever voids a hold this call did not write.
        """
        _check_withdrawal_id(withdrawal_id)
        existing = self.find(withdrawal_id)
        if existing is not None:
            return existing
        asset = _check_request(request)
        request = replace(request, destination=canonical_destination(request.asset, request.destination))
        funding = self._ledger.find_account(user.username, request.asset, AccountKind.USER_AVAILABLE)
        if funding is None:
            raise WithdrawalError(
                WithdrawalCode.NO_FUNDING_ACCOUNT,
                f"{user.username} has no {request.asset} account to withdraw from",
            )
        in_flight = self._ledger.ensure_account(
            PLATFORM_OWNER, request.asset, AccountKind.WITHDRAWALS_IN_FLIGHT
        )
        self._policies.ensure_default()
        hold = TransferRequest(
            id=hold_id_of(withdrawal_id),
            kind=TransferKind.PENDING,
            debit_account=funding.id,
            credit_account=in_flight.id,
            amount=request.amount_minor,
            reference=f"withdrawal {withdrawal_id} hold",
        )
        try:
            with self._sessions.begin() as session:
                # Serialise one user's withdrawals: velocity totals must include the other one,
                # and a concurrent duplicate waits here, then finds the first one's row.
                session.get(User, user.username, with_for_update=True)
                row = session.get(WithdrawalRequest, withdrawal_id)
                if row is not None:
                    return _view(session, row, self._terms(session, row))
                stop = withdrawal_halts.halted(session, request.asset)
                if stop is not None:
                    raise WithdrawalError(
                        WithdrawalCode.WITHDRAWALS_HALTED,
                        f"{request.asset} withdrawals are halted ({stop.scope}: {stop.reason[:80]}); "
                        "try again once operators lift the halt",
                    )
                if freezes.is_frozen(session, user.username):
                    raise WithdrawalError(
                        WithdrawalCode.ACCOUNT_FROZEN,
                        f"{user.username}'s withdrawals are frozen pending review (docs/wallets.md)",
                    )
                self._place_hold(session, user.username, hold)
                return self._decide_new(session, user, request, asset.decimals, withdrawal_id, hold.id)
        except IntegrityError:
            # Another request inserted this id first (its transaction owns its hold; ours
            # rolled back entirely): answer with that withdrawal.
            found = self.find(withdrawal_id)
            if found is None:
                raise
            return found

    def _place_hold(self, session: Session, username: str, hold: TransferRequest) -> None:
        result = self._ledger.submit_in(session, [hold], actor=f"user:{username}")[0]
        if result.code is not None:
            raise LedgerError(result.code, result.message)
        # A hold written earlier under this id (before creation became one transaction) may
        # have been released by the orphan sweep: a withdrawal must never stand on it.
        if result.status is not ResultStatus.CREATED and not hold_is_live(session, hold.id):
            raise WithdrawalError(
                WithdrawalCode.WITHDRAWAL_ID_RELEASED,
                f"withdrawal id {hold.id.removesuffix(HOLD_SUFFIX)} was used and released; "
                "retry with a new Idempotency-Key",
            )

    def _decide_new(
        self, session: Session, user: UserView, request: WithdrawalInput, decimals: int,
        withdrawal_id: str, hold_id: str,
    ) -> WithdrawalView:
        now_ms = self._clock()
        policy = active_policy(session).document
        price = self._prices.get(request.asset)
        context = WithdrawalContext(
            withdrawal_id=withdrawal_id,
            account_id=user.username,
            initiator_id=user.username,
            initiator_roles=user.roles,
            kyc_tier=user.kyc_tier,
            asset=request.asset,
            asset_decimals=decimals,
            amount_minor=request.amount_minor,
            usd_cents_per_unit=price,
            destination=Destination(request.destination, _whitelisted_at(session, user.username, request)),
            source_wallet=WalletTemperature(request.source_wallet),
            now_ms=now_ms,
            velocity=_velocity(session, policy, user.username, request.asset, now_ms),
        )
        decision = evaluate(policy, context)
        row = WithdrawalRequest(
            id=withdrawal_id,
            username=user.username,
            asset=request.asset,
            amount=request.amount_minor,
            amount_usd_cents=0 if price is None else usd_cents(request.amount_minor, price, decimals),
            destination=request.destination,
            source_wallet=request.source_wallet,
            hold_transfer_id=hold_id,
            created_ms=now_ms,
            delays_served="",
        )
        wait = False
        if self.travel_rule is not None:
            # Raises to refuse: the transaction (hold included) rolls back. True: the beneficiary's
            # VASP must approve first (custody/compliance/trp.py).
            usd = None if price is None else row.amount_usd_cents
            wait = bool(self.travel_rule(session, user.username, withdrawal_id, request.asset,
                                         request.amount_minor, request.destination, usd, request.travel_rule))
        event = _apply_decision(row, decision, now_ms)
        refused = None if self.screen is None else self.screen(
            session, user.username, request.asset, request.destination, f"withdrawal:{withdrawal_id}")
        if refused is not None:
            event = Event.BLOCK
            row.closed_by, row.close_reason = COMPLIANCE_ACTOR, refused[:256]
        if wait and event is not Event.BLOCK:
            # Waits as delayed with no release time (the policy decides again once released) until
            # the counterparty approves (`release_waiting`); a rejection or timeout closes it.
            event, row.release_at_ms, row.closed_by = Event.DELAY, TRAVEL_RULE_WAIT_MS, None
        row.state = lifecycle.initial_withdrawal_state(event)
        session.add(row)
        session.flush()
        if row.state == BLOCKED:
            self._void_hold_in(session, withdrawal_id, hold_id, "blocked by policy", POLICY_ACTOR)
        security_log.append(
            session,
            at_ms=now_ms,
            actor=user.username,
            action="withdrawal.create",
            subject=withdrawal_id,
            outcome=row.state,
            details={
                "asset": row.asset,
                "amount": str(row.amount),
                "destination": row.destination,
                "rule_id": row.rule_id,
                "policy_version": row.policy_version,
            },
        )
        return WithdrawalView(row, (), self._terms(session, row))

    def find(self, withdrawal_id: str) -> WithdrawalView | None:
        with self._sessions() as session:
            row = session.get(WithdrawalRequest, withdrawal_id)
            return None if row is None else _view(session, row, self._terms(session, row))

    def get(self, withdrawal_id: str) -> WithdrawalView:
        found = self.find(withdrawal_id)
        if found is None:
            raise WithdrawalError(
                WithdrawalCode.WITHDRAWAL_NOT_FOUND, f"withdrawal {withdrawal_id[:80]} does not exist"
            )
        return found

    def query(
        self, *, username: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[WithdrawalView]:
        """Return withdrawals, newest first (of ``username`` / in ``state`` if given)."""
        assert 1 <= limit <= MAX_LIST, f"limit was {limit}"
        query = (
            select(WithdrawalRequest)
            .order_by(WithdrawalRequest.created_ms.desc(), WithdrawalRequest.id)
            .limit(limit)
        )
        if username is not None:
            query = query.where(WithdrawalRequest.username == username)
        if state is not None:
            query = query.where(WithdrawalRequest.state == state)
        with self._sessions() as session:
            return [_view(session, row, self._terms(session, row)) for row in session.scalars(query)]

    def pending_for(self, approver: UserView, limit: int = 100) -> list[WithdrawalView]:
        """Return withdrawals awaiting a group ``approver`` is in, not initiated by them."""
        groups = {r.value for r in approver.roles}
        return [
            v
            for v in self.query(state=PENDING_APPROVAL, limit=limit)
            if v.row.required_group in groups and v.row.username != approver.username
        ]

    def cancel(self, username: str, withdrawal_id: str) -> WithdrawalView:
        """Cancel one's own open withdrawal (a delay only if the rule made it cancellable)."""
        return self._close(
            withdrawal_id, CANCELLED, actor=username, reason="cancelled by owner", owner=username
        )

    def reject(self, actor: UserView, withdrawal_id: str, reason: str) -> WithdrawalView:
        """Veto an open withdrawal awaiting approval by a group ``actor`` belongs to."""
        return self._close(
            withdrawal_id, REJECTED, actor=actor.username, reason=reason[:256] or "rejected", approver=actor
        )

    def _close(
        self,
        withdrawal_id: str,
        state: str,
        *,
        actor: str,
        reason: str,
        owner: str | None = None,
        approver: UserView | None = None,
    ) -> WithdrawalView:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = _locked(session, withdrawal_id, owner)
            if approver is not None:
                _check_may_decide(row, approver)
            if row.state not in OPEN_STATES or (owner is not None and not _cancellable(row)):
                raise WithdrawalError(
                    WithdrawalCode.WITHDRAWAL_NOT_CANCELLABLE,
                    f"withdrawal {withdrawal_id} is {row.state} and cannot be {state}",
                )
            lifecycle.transition(
                session, Kind.WITHDRAWAL, withdrawal_id, row.state,
                Event.REJECT if state == REJECTED else Event.CANCEL,
                actor=actor, now_ms=now_ms, values={"closed_by": actor, "close_reason": reason},
                details={"reason": reason},
            )
            # The hold is released in the same transaction: never a closed withdrawal holding funds.
            self._void_hold_in(session, withdrawal_id, row.hold_transfer_id, state, f"user:{actor}")
            session.flush()
            return _view(session, row, self._terms(session, row))

    def release_waiting(self, session: Session, withdrawal_id: str, release_at_ms: int) -> bool:
        """Give a withdrawal waiting for the travel rule's counterparty its release time (caller's tx).

        `release_due` then evaluates the policy again (approvals, delays); False if it no longer waits.
        """
        row = session.get(WithdrawalRequest, withdrawal_id, with_for_update=True)
        if row is None or row.state != DELAYED or row.release_at_ms != TRAVEL_RULE_WAIT_MS:
            return False
        # A delay the policy chose at creation still runs from then (it is not served by waiting).
        policy_release = json.loads(row.decision).get("release_at_ms") or 0
        row.release_at_ms, row.updated_ms = max(release_at_ms, policy_release), self._clock()
        return True

    def refuse_waiting(self, withdrawal_id: str, *, actor: str, reason: str) -> WithdrawalView | None:
        """Close a withdrawal waiting for the travel rule's counterparty as rejected, its hold voided.

        None if it does not wait (any more): cancelled by its owner, or already decided.
        """
        with self._sessions() as session:
            row = session.get(WithdrawalRequest, withdrawal_id)
            if row is None or row.state != DELAYED or row.release_at_ms != TRAVEL_RULE_WAIT_MS:
                return None
        try:
            return self._close(withdrawal_id, REJECTED, actor=actor, reason=reason[:256])
        except WithdrawalError:
            return None  # moved on concurrently

    def approve(self, actor: UserView, withdrawal_id: str, approval: Approval) -> WithdrawalView:
        """Add ``actor``'s signed approval; the withdrawal is approved once the quorum is met."""
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = _locked(session, withdrawal_id, None)
            if row.state != PENDING_APPROVAL or row.required_group is None:
                raise WithdrawalError(
                    WithdrawalCode.WITHDRAWAL_NOT_AWAITING_APPROVAL,
                    f"withdrawal {withdrawal_id} is {row.state}, not pending_approval",
                )
            subject = subject_of(row, self._terms(session, row))
            requirement = QuorumRequirement(row.required_count, row.required_group)
            registry = load_registry(session)
            added = add_approval(
                session,
                Ballot(ApprovalKind.WITHDRAWAL, withdrawal_id, row.username),
                actor.username,
                Signed(approval, lambda approvals: verify_quorum(
                    subject, approvals, registry, requirement, row.username, now_ms)),
                now_ms=now_ms,
            )
            if added.met:
                lifecycle.transition(
                    session, Kind.WITHDRAWAL, withdrawal_id, PENDING_APPROVAL, Event.QUORUM_MET,
                    actor="system", now_ms=now_ms, values={"closed_by": actor.username},
                    details={"approvers": sorted(added.approvers)},
                )
            session.flush()
            return _view(session, row, self._terms(session, row))

    def release_due(self, limit: int = MAX_RELEASE_BATCH) -> list[WithdrawalView]:
        """Evaluate again every delayed withdrawal whose delay is over (the delay rule now served)."""
        now_ms = self._clock()
        with self._sessions() as session:
            due = list(
                session.scalars(
                    select(WithdrawalRequest.id)
                    .where(WithdrawalRequest.state == DELAYED, WithdrawalRequest.release_at_ms <= now_ms)
                    .order_by(WithdrawalRequest.release_at_ms)
                    .limit(limit)
                )
            )
        return [self._release(withdrawal_id) for withdrawal_id in due]

    def _release(self, withdrawal_id: str) -> WithdrawalView:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = _locked(session, withdrawal_id, None)
            if row.state != DELAYED or row.release_at_ms is None or row.release_at_ms > now_ms:
                return _view(session, row, self._terms(session, row))
            user = session.get(User, row.username, with_for_update=True)
            assert user is not None
            from custody.access.users import user_view

            served = frozenset(filter(None, [*row.delays_served.split(","), row.rule_id]))
            policy = active_policy(session).document
            asset = get_asset(row.asset)
            assert asset is not None
            request = WithdrawalInput(row.asset, row.amount, row.destination, row.source_wallet)
            view = user_view(user)
            context = WithdrawalContext(
                withdrawal_id=row.id,
                account_id=row.username,
                initiator_id=row.username,
                initiator_roles=view.roles,
                kyc_tier=view.kyc_tier,
                asset=row.asset,
                asset_decimals=asset.decimals,
                amount_minor=row.amount,
                usd_cents_per_unit=self._prices.get(row.asset),
                destination=Destination(row.destination, _whitelisted_at(session, row.username, request)),
                source_wallet=WalletTemperature(row.source_wallet),
                now_ms=now_ms,
                velocity=_velocity(session, policy, row.username, row.asset, now_ms, exclude=row.id),
                delays_served=served,
            )
            event = _apply_decision(row, evaluate(policy, context), now_ms)
            row.delays_served = ",".join(sorted(served))
            moved = lifecycle.transition(
                session, Kind.WITHDRAWAL, row.id, DELAYED, event, actor="system", now_ms=now_ms,
                action="withdrawal.release", outcome=lifecycle.initial_withdrawal_state(event),
                details={"rule_id": row.rule_id},
            )
            if moved.to_state == BLOCKED:
                self._void_hold_in(session, row.id, row.hold_transfer_id, "blocked by policy", POLICY_ACTOR)
            session.flush()
            return _view(session, row, self._terms(session, row))

    # -- orphan holds -------------------------------------------------------------------------

    def sweep_orphan_holds(
        self, grace_ms: int = ORPHAN_HOLD_GRACE_MS, limit: int = SWEEP_BATCH_MAX
    ) -> list[str]:
        """Void live withdrawal holds older than ``grace_ms`` that no open withdrawal stands on.

        An orphan is a hold with no withdrawal row (written before creation became one
        transaction), or the hold of a withdrawal closed without a transaction (rejected,
        cancelled, blocked) whose void was lost the same way. Each void is checked again
        under the journal lock in its own transaction, so a withdrawal being created on
        that hold right now either committed first (and the hold is left alone) or will
        find the hold released and refuse.
        """
        now_ms = self._clock()
        with self._sessions() as session:
            candidates = list(session.scalars(_orphan_holds(now_ms - grace_ms).limit(limit)))
        return [hold_id for hold_id in candidates if self._sweep_one(hold_id, now_ms)]

    def _sweep_one(self, hold_id: str, now_ms: int) -> bool:
        withdrawal_id = hold_id.removesuffix(HOLD_SUFFIX)
        try:
            with self._sessions.begin() as session:
                self._void_hold_in(session, withdrawal_id, hold_id, "orphan hold swept", SWEEP_ACTOR)
                row = session.scalar(
                    select(WithdrawalRequest).where(WithdrawalRequest.hold_transfer_id == hold_id)
                )
                if row is not None and row.state not in RELEASED_STATES:
                    raise _HoldInUse(hold_id)
                security_log.append(session, at_ms=now_ms, actor="system", action="withdrawal.hold_swept",
                                    subject=withdrawal_id,
                                    details={"hold": hold_id, "withdrawal_state": row.state if row else None})
        except _HoldInUse:
            return False
        except LedgerError as exc:
            log.warning("orphan hold %s not swept: %s", hold_id, exc.message)
            return False
        log.info("orphan hold %s voided", hold_id)
        return True

    def _void_hold_in(self, session: Session, withdrawal_id: str, hold_id: str, why: str, actor: str) -> None:
        """Void the withdrawal's own hold in ``session`` (committed with the state change, or not at all)."""
        result = self._ledger.submit_in(session, [TransferRequest(
            id=f"{withdrawal_id}:void", kind=TransferKind.VOID, pending_id=hold_id,
            reference=f"withdrawal {withdrawal_id} released: {why}"[:REFERENCE_MAX_LEN],
        )], actor=actor)[0]
        if result.code is not None:
            raise LedgerError(result.code, result.message)


class _HoldInUse(Exception):
    """Roll back a sweep: a withdrawal that still needs the hold was found under the lock."""


def hold_id_of(withdrawal_id: str) -> str:
    """Return the ledger transfer id of a withdrawal's hold."""
    return withdrawal_id + HOLD_SUFFIX


def hold_is_live(session: Session, hold_id: str) -> bool:
    """Tell whether ``hold_id`` is a pending ledger transfer that nothing has posted, voided or expired."""
    kind = session.scalar(select(LedgerTransfer.kind).where(LedgerTransfer.id == hold_id))
    if kind != TransferKind.PENDING.value:
        return False
    resolved = session.scalar(select(LedgerTransfer.seq).where(LedgerTransfer.pending_id == hold_id).limit(1))
    return resolved is None


def _orphan_holds(older_than_ms: int) -> Any:
    """Select ids of live withdrawal holds older than ``older_than_ms`` with no open withdrawal."""
    resolver = aliased(LedgerTransfer)
    in_flight = aliased(LedgerAccount)
    return (
        select(LedgerTransfer.id)
        .join(in_flight, in_flight.id == LedgerTransfer.credit_account_id)
        .where(
            LedgerTransfer.kind == TransferKind.PENDING.value,
            LedgerTransfer.id.endswith(HOLD_SUFFIX),
            in_flight.kind == AccountKind.WITHDRAWALS_IN_FLIGHT.value,
            LedgerTransfer.timestamp_ms <= older_than_ms,
            ~exists().where(resolver.pending_id == LedgerTransfer.id),
            ~exists().where(WithdrawalRequest.hold_transfer_id == LedgerTransfer.id,
                            WithdrawalRequest.state.not_in(RELEASED_STATES)),
        )
        .order_by(LedgerTransfer.seq)
    )


def _check_withdrawal_id(withdrawal_id: str) -> None:
    if not isinstance(withdrawal_id, str) or not WITHDRAWAL_ID_PATTERN.fullmatch(withdrawal_id):
        raise WithdrawalError(
            WithdrawalCode.WITHDRAWAL_ID_INVALID,
            f"withdrawal id was {str(withdrawal_id)[:80]!r}, must match {WITHDRAWAL_ID_PATTERN.pattern}",
        )


def subject_of(row: WithdrawalRequest, terms: TransferTerms | None = None) -> ApprovalSubject:
    """Return exactly what approvers of this withdrawal sign (with a cold withdrawal's terms)."""
    return ApprovalSubject(
        kind=SubjectKind.WITHDRAWAL,
        subject_id=row.id,
        policy_id=row.policy_id,
        policy_version=row.policy_version,
        asset=row.asset,
        amount_minor=row.amount,
        destination=row.destination,
        rule_id=row.rule_id or "",
    ).with_terms(terms)


def subject_json(subject: ApprovalSubject) -> dict[str, object]:
    return {
        "kind": subject.kind.name.lower(),
        "subject_id": subject.subject_id,
        "policy_id": subject.policy_id,
        "policy_version": subject.policy_version,
        "asset": subject.asset,
        "amount_minor": str(subject.amount_minor),
        "destination": subject.destination,
        "document_sha256": subject.document_sha256,
        "rule_id": subject.rule_id,
        "chain": subject.chain,
        "network": subject.network,
        "source_wallet": subject.source_wallet,
        "fee_cap_minor": str(subject.fee_cap_minor),
    }


def _apply_decision(row: WithdrawalRequest, decision: Decision, now_ms: int) -> Event:
    """Write ``decision`` into ``row`` (not its state); return the lifecycle event it is."""
    action = decision.action
    row.policy_id, row.policy_version = decision.policy_id, decision.policy_version
    row.policy_digest, row.rule_id = decision.policy_digest, decision.rule_id
    row.decision = json.dumps(decision.to_json(), sort_keys=True, separators=(",", ":"))
    row.required_count, row.required_group, row.release_at_ms = 0, None, None
    row.updated_ms = now_ms
    if decision.refusal is not None:
        row.closed_by, row.close_reason = "policy", decision.refusal.message[:256]
        return Event.BLOCK
    if isinstance(action, Allow):
        row.closed_by = "policy"
        return Event.ALLOW
    if isinstance(action, RequireApprovals):
        row.required_count, row.required_group = action.requirement.count, action.requirement.group
        return Event.REQUIRE_APPROVALS
    assert isinstance(action, Delay), f"unexpected action {action!r}"
    row.release_at_ms = decision.release_at_ms
    return Event.DELAY


def _cancellable(row: WithdrawalRequest) -> bool:
    if row.state != DELAYED:
        return True
    action = json.loads(row.decision).get("action", {})
    return bool(action.get("cancellable", False))


def _check_may_decide(row: WithdrawalRequest, approver: UserView) -> None:
    if row.username == approver.username:
        raise AccessError(
            AccessCode.APPROVER_MISMATCH, "the initiator cannot reject or approve their own withdrawal"
        )
    groups = {r.value for r in approver.roles}
    if row.required_group is not None and row.required_group not in groups:
        raise AccessError(
            AccessCode.APPROVER_MISMATCH,
            f"withdrawal {row.id} needs group {row.required_group}; you are in {sorted(groups)}",
        )


def _locked(session: Session, withdrawal_id: str, owner: str | None) -> WithdrawalRequest:
    row = session.get(WithdrawalRequest, withdrawal_id, with_for_update=True)
    # Someone else's withdrawal is "not found": its existence is not revealed.
    if row is None or (owner is not None and row.username != owner):
        raise WithdrawalError(
            WithdrawalCode.WITHDRAWAL_NOT_FOUND, f"withdrawal {withdrawal_id[:80]} does not exist"
        )
    return row


def _view(session: Session, row: WithdrawalRequest, terms: TransferTerms | None) -> WithdrawalView:
    approvals = tuple(
        (a.approval_id, a.approver, a.key_id or "")
        for a in approval_rows(session, ApprovalKind.WITHDRAWAL, row.id)
    )
    return WithdrawalView(row, approvals, terms)


def _whitelisted_at(session: Session, username: str, request: WithdrawalInput) -> int | None:
    return session.scalar(
        select(WhitelistAddress.added_ms).where(
            WhitelistAddress.username == username,
            WhitelistAddress.asset == request.asset,
            WhitelistAddress.address == request.destination,
            WhitelistAddress.removed_ms.is_(None),
        )
    )


def _velocity(
    session: Session,
    policy: PolicyDocument,
    username: str,
    asset: str,
    now_ms: int,
    exclude: str | None = None,
) -> dict[Any, Any]:
    windows = policy.velocity_windows
    if not windows:
        return {}
    oldest_ms = now_ms - max(w.window_s for w in windows) * MS_PER_S
    assert max(w.window_s for w in windows) <= MAX_VELOCITY_WINDOW_S
    rows = session.execute(
        select(
            WithdrawalRequest.id,
            WithdrawalRequest.username,
            WithdrawalRequest.asset,
            WithdrawalRequest.amount,
            WithdrawalRequest.amount_usd_cents,
            WithdrawalRequest.created_ms,
        ).where(WithdrawalRequest.created_ms > oldest_ms, WithdrawalRequest.state.in_(COUNTED_STATES))
    )
    history = [
        PastWithdrawal(r.username, r.asset, r.amount, r.amount_usd_cents, r.created_ms)
        for r in rows
        if r.id != exclude
    ]
    return velocity_totals(history, windows, account_id=username, asset=asset, now_ms=now_ms)


def _check_request(request: WithdrawalInput) -> Any:
    asset = _check_asset(request.asset)
    _check_address(request.destination)
    if request.source_wallet not in {t.value for t in WalletTemperature}:
        raise WithdrawalError(
            WithdrawalCode.SOURCE_WALLET_INVALID,
            f"source_wallet was {request.source_wallet[:20]!r}, must be hot or cold",
        )
    amount = request.amount_minor
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise WithdrawalError(
            WithdrawalCode.ASSET_NOT_WITHDRAWABLE, f"amount was {amount!r}, must be positive"
        )
    return asset


def _check_asset(code: str) -> Any:
    asset = get_asset(code)
    if asset is None or code == "USD":
        raise WithdrawalError(
            WithdrawalCode.ASSET_NOT_WITHDRAWABLE, f"asset was {code[:20]!r}, must be one of BTC, ETH, USDC"
        )
    return asset


def _check_address(address: str) -> None:
    if not isinstance(address, str) or not is_identifier(address, MAX_ADDRESS_CHARS):
        raise WithdrawalError(
            WithdrawalCode.ADDRESS_INVALID,
            f"address was {str(address)[:80]!r}, must be 1..{MAX_ADDRESS_CHARS} printable "
            "ASCII characters without spaces",
        )


def _whitelist_view(row: WhitelistAddress) -> WhitelistView:
    return WhitelistView(row.id, row.username, row.asset, row.address, row.label, row.added_ms)
