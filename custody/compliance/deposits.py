"""Deposit compliance: every incoming deposit is credited, held over its owner's KYC cap, or quarantined.

The deposit watcher asks (`custody.wallets.deposit_watcher.DepositGate`) in
the transaction that first records a deposit, so nothing is booked before it
is decided, and a crash between the two is impossible:

- the sender is on the current sanctions list (for its chain family): the
  deposit is **quarantined**: booked to ``quarantine:<owner>`` (a USER_HELD
  account: the coins are on chain and owed to nobody until the case is
  decided), a score-100 sanctions alert opens or joins the owner's case and
  the owner is frozen (`ScreeningPolicy`);
- otherwise, if crediting it would take the owner's credited deposits over
  the rolling 24h cap of their KYC tier (`policies.kyc.deposit_cap_refusal`;
  unknown owners are tier 0): it is **held** in ``kyc-hold:<owner>`` and a
  ``kyc_limit`` alert asks an officer to look; an officer may release it to
  the owner's available balance once it is credited on chain;
- otherwise it is credited to the owner's available balance as before.

The decision is taken under a lock on the owner's user row, so two deposits
seen at the same time (two chains' watchers) cannot both fit under one cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.models import User
from custody.assets import get_asset
from custody.compliance.cases import AlertInput, raise_alert
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import ComplianceDeposit
from custody.compliance.screening import QUARANTINED_DEPOSIT, Screening
from custody.ledger.codes import LedgerCode
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from custody.wallets.models import ChainDeposit
from policies.kyc import DEPOSIT_WINDOW_MS, deposit_cap_refusal
from policies.price import usd_cents

CREDIT, HELD, QUARANTINED = "credit", "held_tier_cap", QUARANTINED_DEPOSIT
KYC_LIMIT = "kyc_limit"
DEPOSIT_ACTOR = "service:deposit-compliance"
HOLD_OWNER_PREFIX, QUARANTINE_OWNER_PREFIX = "kyc-hold:", "quarantine:"
# The deposit watcher records a deposit seen again after a reorg under the same id: same decision.
CREDITED_STATUS = "credited"
REASON_MAX_CHARS = 512
MAX_LIST = 500


def deposit_json(row: ComplianceDeposit) -> dict[str, Any]:
    return {"deposit_id": row.deposit_id, "owner": row.owner, "asset": row.asset,
            "amount_minor": str(row.amount_minor), "usd_cents": row.usd_cents, "sender": row.sender,
            "tier": row.tier, "decision": row.decision, "reason": row.reason, "alert_id": row.alert_id,
            "decided_ms": row.decided_ms, "released_by": row.released_by, "released_ms": row.released_ms,
            "release_reason": row.release_reason}


class DepositCompliance:
    """Decide incoming deposits (the watcher's gate) and let officers release tier-cap holds."""

    def __init__(self, sessions: sessionmaker[Session], ledger: Ledger, screening: Screening,
                 clock: Callable[[], int], prices_usd_cents: Mapping[str, int]) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._screening = screening
        self._clock = clock
        self._prices = dict(prices_usd_cents)

    # -- the deposit watcher's gate ------------------------------------------------------------

    def on_seen(self, session: Session, deposit: ChainDeposit, sender: str, now_ms: int) -> None:
        """Decide ``deposit`` in the watcher's transaction (idempotent: a decision never changes)."""
        if session.get(ComplianceDeposit, deposit.id) is not None:
            return
        # Serialise decisions per owner: the cap check reads the window, then adds to it.
        user = session.scalar(select(User).where(User.username == deposit.owner).with_for_update())
        tier = 0 if user is None else user.kyc_tier
        amount_usd = self._usd(deposit.asset, deposit.amount_minor)
        alert_id = self._screening.screen_deposit_source(session, deposit.owner, deposit.asset, sender,
                                                         f"deposit:{deposit.id}") if sender else None
        if alert_id is not None:
            decision, reason = QUARANTINED, f"sender {sender} is on the sanctions list"
        else:
            credited = self._credited_usd(session, deposit.owner, now_ms)
            refusal = deposit_cap_refusal(tier, credited, amount_usd)
            decision, reason = (CREDIT, "within the tier cap") if refusal is None else (HELD, refusal)
            if refusal is not None:
                alert_id = self._raise_hold_alert(session, deposit, tier, amount_usd, refusal, now_ms)
        session.add(ComplianceDeposit(
            deposit_id=deposit.id, owner=deposit.owner, asset=deposit.asset,
            amount_minor=deposit.amount_minor, usd_cents=amount_usd, sender=sender[:256], tier=tier,
            decision=decision, reason=reason[:REASON_MAX_CHARS], alert_id=alert_id, decided_ms=now_ms))
        if decision != CREDIT:
            security_log.append(
                session, at_ms=now_ms, actor=DEPOSIT_ACTOR, action=f"compliance.deposit.{decision}",
                subject=deposit.id, outcome="alert",
                details={"owner": deposit.owner, "asset": deposit.asset, "amount": str(deposit.amount_minor),
                         "tier": tier, "alert_id": alert_id})
        session.flush()

    def credit_account(self, deposit: ChainDeposit) -> int | None:
        """Return the hold or quarantine account ``deposit`` is booked to, or None for the owner's own."""
        with self._sessions() as session:
            row = session.get(ComplianceDeposit, deposit.id)
            decision = None if row is None else row.decision
        if decision is None or decision == CREDIT:
            return None
        prefix = QUARANTINE_OWNER_PREFIX if decision == QUARANTINED else HOLD_OWNER_PREFIX
        owner = f"{prefix}{deposit.owner}"
        return self._ledger.ensure_account(owner, deposit.asset, AccountKind.USER_HELD).id

    # -- officers ------------------------------------------------------------------------------

    def list(self, viewer: str, *, decision: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return deposit decisions other than plain credits (newest first), never the viewer's own."""
        query = select(ComplianceDeposit).where(ComplianceDeposit.owner != viewer)
        query = query.where(ComplianceDeposit.decision != CREDIT) if decision is None else query.where(
            ComplianceDeposit.decision == decision)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(ComplianceDeposit.decided_ms.desc())
                                   .limit(max(1, min(limit, MAX_LIST))))
            return [deposit_json(row) for row in rows]

    def release(self, officer: str, deposit_id: str, reason: str) -> dict[str, Any]:
        """Move a credited tier-cap hold to its owner's available balance; refuse anything else."""
        text = reason.strip()
        if not text or len(text) > REASON_MAX_CHARS:
            raise ComplianceError(ComplianceCode.DEPOSIT_INPUT_INVALID,
                                  f"reason was {len(text)} characters, must be 1..{REASON_MAX_CHARS}")
        with self._sessions() as session:
            found = session.get(ComplianceDeposit, deposit_id)
            if found is None or found.owner == officer or found.decision == CREDIT:
                raise ComplianceError(ComplianceCode.DEPOSIT_NOT_FOUND,
                                      f"no held deposit {deposit_id[:120]!r}")
            owner, asset = found.owner, found.asset
        # Accounts first: opening one is its own transaction, which SQLite would queue behind ours.
        hold = self._ledger.ensure_account(f"{HOLD_OWNER_PREFIX}{owner}", asset, AccountKind.USER_HELD).id
        available = self._ledger.ensure_account(owner, asset, AccountKind.USER_AVAILABLE).id
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.scalar(select(ComplianceDeposit).where(
                ComplianceDeposit.deposit_id == deposit_id).with_for_update())
            assert row is not None, "decisions are never deleted"
            self._check_releasable(session, row)
            # Inside the decision's transaction, so the release and its record commit together.
            results = self._ledger.submit_in(session, [TransferRequest(
                id=f"{deposit_id}:kyc-release", debit_account=hold, credit_account=available,
                amount=row.amount_minor, reference=f"released by compliance: {text}"[:256])],
                actor=f"user:{officer}")
            refused = [r for r in results if not r.ok and r.code is not LedgerCode.LINKED_TRANSFER_FAILED]
            if refused:
                raise ComplianceError(ComplianceCode.DEPOSIT_NOT_RELEASABLE, refused[0].message)
            row.released_by, row.released_ms, row.release_reason = officer, now_ms, text
            security_log.append(session, at_ms=now_ms, actor=f"user:{officer}",
                                action="compliance.deposit.release", subject=deposit_id,
                                details={"owner": row.owner, "asset": row.asset,
                                         "amount": str(row.amount_minor), "reason": text})
            return deposit_json(row)

    # -- helpers -------------------------------------------------------------------------------

    def _check_releasable(self, session: Session, row: ComplianceDeposit) -> None:
        if row.decision == QUARANTINED:
            raise ComplianceError(ComplianceCode.DEPOSIT_NOT_RELEASABLE,
                                  "a quarantined deposit stays quarantined while its sanctions case stands")
        if row.released_ms is not None:
            raise ComplianceError(ComplianceCode.DEPOSIT_NOT_RELEASABLE,
                                  f"deposit {row.deposit_id} was already released by {row.released_by}")
        chain_row = session.get(ChainDeposit, row.deposit_id)
        if chain_row is None or chain_row.status != CREDITED_STATUS or not chain_row.ledger_synced:
            status = None if chain_row is None else chain_row.status
            raise ComplianceError(ComplianceCode.DEPOSIT_NOT_RELEASABLE,
                                  f"deposit {row.deposit_id} is {status}, must be credited on chain first")

    def _credited_usd(self, session: Session, owner: str, now_ms: int) -> int:
        """Return the USD cents of ``owner``'s deposits credited (or released) in the rolling window."""
        since = now_ms - DEPOSIT_WINDOW_MS
        credited = session.scalar(select(func.coalesce(func.sum(ComplianceDeposit.usd_cents), 0)).where(
            ComplianceDeposit.owner == owner, ComplianceDeposit.decided_ms > since,
            (ComplianceDeposit.decision == CREDIT) | (ComplianceDeposit.released_ms.is_not(None))))
        return int(credited or 0)

    def _raise_hold_alert(self, session: Session, deposit: ChainDeposit, tier: int, amount_usd: int | None,
                          refusal: str, now_ms: int) -> str:
        digest = hashlib.sha256(f"{KYC_LIMIT}\n{deposit.id}".encode()).hexdigest()
        row, _ = raise_alert(session, AlertInput(
            alert_id=f"kyc_{digest[:32]}", kind=KYC_LIMIT, rule_id="kyc.deposit_cap", username=deposit.owner,
            subject_kind="deposit", subject=f"deposit:{deposit.id}", score=50,
            evidence={"deposit_id": deposit.id, "asset": deposit.asset,
                      "amount_minor": str(deposit.amount_minor), "usd_cents": amount_usd, "tier": tier,
                      "why": refusal}), now_ms=now_ms, actor=DEPOSIT_ACTOR)
        return row.id

    def _usd(self, asset: str, amount_minor: int) -> int | None:
        found = get_asset(asset)
        price = self._prices.get(asset)
        return None if found is None or price is None else usd_cents(amount_minor, price, found.decimals)
