"""The withdrawal and refill lifecycles: states, events, one transition table, one writer.

Every state change of a withdrawal (``withdrawal_requests.state``) or a cold
-> hot refill (``wallet_refill_proposals.status``) goes through `transition`:
it looks the event up in the table, moves the row with one
``UPDATE ... SET state = :to WHERE id = :id AND state = :from`` (so the check
and the move are one statement: of two concurrent transitions from the same
state exactly one matches a row, the other is refused), and appends the
security-log event in the caller's transaction. A new withdrawal's first state
comes from `initial_withdrawal_state`, from the same table. The database
refuses any other value in the state column (migration 0016_lifecycle_states).

Withdrawals::

    (new)    --allow--> approved   --require_approvals--> pending_approval
             --delay--> delayed    --block--> blocked
    delayed  --allow/require_approvals/delay/block--> (evaluated again, the delay served)
    pending_approval --quorum_met--> approved
    pending_approval / delayed --cancel--> cancelled, --reject--> rejected
    approved --dispatch--> broadcasting                  (hot: custody.wallets.dispatch)
    approved --export--> awaiting_signature              (cold: custody.bundles)
    approved --fail--> failed                            (its hold is not live: never sent)
    awaiting_signature --export--> awaiting_signature    (the unsigned bundle expired; a new one)
    awaiting_signature --signed--> broadcasting
    broadcasting --confirm--> completed, --fail--> failed

Refills::

    proposed --quorum_met--> awaiting_signer --export--> awaiting_signature
    awaiting_signature --export--> awaiting_signature, --signed--> broadcasting
    broadcasting --confirm--> completed, --fail--> failed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import column, table, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from custody import security_log
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from custody.withdrawals.models import WithdrawalRequest

# The refill table (custody.wallets.models.RefillProposal) by name: the wallets package
# uses this module, so this module does not import the wallets package back.
_REFILLS = table("wallet_refill_proposals", column("id"), column("status"), column("updated_ms"))


class WithdrawalState(StrEnum):
    """Where a withdrawal is (``withdrawal_requests.state``)."""

    PENDING_APPROVAL = "pending_approval"
    DELAYED = "delayed"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    AWAITING_SIGNATURE = "awaiting_signature"
    BROADCASTING = "broadcasting"
    COMPLETED = "completed"
    FAILED = "failed"


class RefillState(StrEnum):
    """Where a cold -> hot refill is (``wallet_refill_proposals.status``)."""

    PROPOSED = "proposed"
    AWAITING_SIGNER = "awaiting_signer"
    AWAITING_SIGNATURE = "awaiting_signature"
    BROADCASTING = "broadcasting"
    COMPLETED = "completed"
    FAILED = "failed"


class Event(StrEnum):
    """What happens to a withdrawal or refill."""

    # The withdrawal policy's decision (at creation, and again when a delay is over).
    ALLOW = "allow"
    REQUIRE_APPROVALS = "require_approvals"
    DELAY = "delay"
    BLOCK = "block"
    QUORUM_MET = "quorum_met"
    CANCEL = "cancel"
    REJECT = "reject"
    DISPATCH = "dispatch"
    EXPORT = "export"
    SIGNED = "signed"
    CONFIRM = "confirm"
    FAIL = "fail"


W, R, E = WithdrawalState, RefillState, Event
_DECISIONS = {
    E.ALLOW: W.APPROVED, E.REQUIRE_APPROVALS: W.PENDING_APPROVAL, E.DELAY: W.DELAYED, E.BLOCK: W.BLOCKED,
}

# The first state of a new withdrawal, by the policy's decision.
WITHDRAWAL_INITIAL: Mapping[Event, WithdrawalState] = _DECISIONS

WITHDRAWAL_TRANSITIONS: Mapping[tuple[WithdrawalState, Event], WithdrawalState] = {
    **{(W.DELAYED, event): to for event, to in _DECISIONS.items()},
    (W.DELAYED, E.CANCEL): W.CANCELLED,
    (W.DELAYED, E.REJECT): W.REJECTED,
    (W.PENDING_APPROVAL, E.QUORUM_MET): W.APPROVED,
    (W.PENDING_APPROVAL, E.CANCEL): W.CANCELLED,
    (W.PENDING_APPROVAL, E.REJECT): W.REJECTED,
    (W.APPROVED, E.DISPATCH): W.BROADCASTING,
    (W.APPROVED, E.EXPORT): W.AWAITING_SIGNATURE,
    (W.APPROVED, E.FAIL): W.FAILED,
    (W.AWAITING_SIGNATURE, E.EXPORT): W.AWAITING_SIGNATURE,
    (W.AWAITING_SIGNATURE, E.SIGNED): W.BROADCASTING,
    (W.BROADCASTING, E.CONFIRM): W.COMPLETED,
    (W.BROADCASTING, E.FAIL): W.FAILED,
}

REFILL_TRANSITIONS: Mapping[tuple[RefillState, Event], RefillState] = {
    (R.PROPOSED, E.QUORUM_MET): R.AWAITING_SIGNER,
    (R.AWAITING_SIGNER, E.EXPORT): R.AWAITING_SIGNATURE,
    (R.AWAITING_SIGNATURE, E.EXPORT): R.AWAITING_SIGNATURE,
    (R.AWAITING_SIGNATURE, E.SIGNED): R.BROADCASTING,
    (R.BROADCASTING, E.CONFIRM): R.COMPLETED,
    (R.BROADCASTING, E.FAIL): R.FAILED,
}

# No event leaves these.
WITHDRAWAL_FINAL = frozenset(W) - {state for state, _ in WITHDRAWAL_TRANSITIONS}
REFILL_FINAL = frozenset(R) - {state for state, _ in REFILL_TRANSITIONS}


class Kind(StrEnum):
    """Which lifecycle; also the security-log action prefix (``withdrawal.approved``)."""

    WITHDRAWAL = "withdrawal"
    REFILL = "refill"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change that happened."""

    kind: Kind
    subject_id: str
    from_state: str
    event: Event
    to_state: str


def next_state(kind: Kind, from_state: str, event: Event) -> str | None:
    """Return the state ``event`` moves a ``kind`` in ``from_state`` to, or None if it may not."""
    if kind is Kind.WITHDRAWAL:
        try:
            return WITHDRAWAL_TRANSITIONS.get((WithdrawalState(from_state), event))
        except ValueError:
            return None
    try:
        return REFILL_TRANSITIONS.get((RefillState(from_state), event))
    except ValueError:
        return None


def initial_withdrawal_state(event: Event) -> WithdrawalState:
    """Return a new withdrawal's state for the policy's decision ``event``."""
    state = WITHDRAWAL_INITIAL.get(event)
    if state is None:
        raise ValueError(f"{event} does not start a withdrawal")
    return state


def transition(
    session: Session,
    kind: Kind,
    subject_id: str,
    from_state: str,
    event: Event,
    *,
    actor: str,
    now_ms: int,
    values: Mapping[str, Any] | None = None,
    action: str | None = None,
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
    row: Any = None,
) -> Transition:
    """Move ``subject_id`` from ``from_state`` by ``event`` in ``session``'s transaction; log it.

    ``values`` are other columns written by the same UPDATE (``closed_by``...).
    The security-log action is ``<kind>.<to_state>`` unless ``action`` names
    another. ``row``, a refill row loaded in ``session``, is given its new state
    and time (withdrawal rows in the session are updated by the ORM). Raises
    `WithdrawalError` ``WITHDRAWAL_STATE_CONFLICT`` if the table has no such
    transition or the row is no longer in ``from_state`` (another transition
    won); nothing is written then.
    """
    to_state = next_state(kind, from_state, event)
    if to_state is None:
        raise WithdrawalError(
            WithdrawalCode.WITHDRAWAL_STATE_CONFLICT,
            f"{kind} {subject_id[:80]} is {from_state[:32]}: '{event}' does not apply",
        )
    extra = dict(values or {})
    if kind is Kind.WITHDRAWAL:
        statement = (
            update(WithdrawalRequest)
            .where(WithdrawalRequest.id == subject_id, WithdrawalRequest.state == from_state)
            .values(state=to_state, updated_ms=now_ms, **extra)
        )
    else:
        statement = (
            update(_REFILLS)
            .where(_REFILLS.c.id == subject_id, _REFILLS.c.status == from_state)
            .values(status=to_state, updated_ms=now_ms, **extra)
        )
    options = {"synchronize_session": "fetch"} if kind is Kind.WITHDRAWAL else {}
    result = session.execute(statement, execution_options=options)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise WithdrawalError(
            WithdrawalCode.WITHDRAWAL_STATE_CONFLICT,
            f"{kind} {subject_id[:80]} is no longer {from_state[:32]}; '{event}' was not applied",
        )
    if row is not None and kind is Kind.REFILL:
        for name, value in {"status": to_state, "updated_ms": now_ms, **extra}.items():
            set_committed_value(row, name, value)
    security_log.append(
        session,
        at_ms=now_ms,
        actor=actor,
        action=action or f"{kind}.{to_state}",
        subject=subject_id,
        outcome=outcome,
        details={**(details or {}), "from": from_state, "event": event.value},
    )
    return Transition(kind, subject_id, from_state, event, to_state)
