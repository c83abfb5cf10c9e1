"""KYC reviews: a user asks for a tier, a provider decides, the tier (and so the limits) moves.

Lifecycle (one transition table)::

    pending --approve--> approved        (the user's kyc_tier becomes the requested tier)
    pending --reject (reason)--> rejected
    pending --request_more (reason)--> more_info   (the user submits a new request)

The embedded provider is ``manual``: compliance officers decide through the
API (never a review of their own). Other providers decide through signed
callbacks (`Kyc.provider_callback`): the body's HMAC-SHA256 under the
provider's secret, compared in constant time; each event id is applied
once, a replay answers what the first one did. A request from a blocked
jurisdiction (`policies.kyc`) is recorded as rejected at once. Every step
is in the security log; a tier change records the old and new tier.
Withdrawal limits follow the tier through the withdrawal policy's
``kyc_tier_in`` rules (`policies.kyc.withdrawal_limits` shows them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.models import User
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import REASON_MAX_LEN, KycProviderEvent, KycReview
from policies.jurisdictions import JurisdictionRules, default_jurisdiction_rules
from policies.kyc import TIERS, jurisdiction_refusal

MANUAL = "manual"
PENDING, APPROVED, REJECTED, MORE_INFO = "pending", "approved", "rejected", "more_info"
REVIEW_STATES = (PENDING, APPROVED, REJECTED, MORE_INFO)
TRANSITIONS: Mapping[tuple[str, str], str] = {
    (PENDING, "approve"): APPROVED,
    (PENDING, "reject"): REJECTED,
    (PENDING, "request_more"): MORE_INFO,
}
ANSWERS = {"approved": "approve", "rejected": "reject", "more_info": "request_more"}
MAX_LIST = 500
MAX_CALLBACK_BYTES = 16 * 1024


def review_json(row: KycReview) -> dict[str, Any]:
    return {
        "id": row.id,
        "username": row.username,
        "requested_tier": row.requested_tier,
        "country": row.country,
        "provider": row.provider,
        "state": row.state,
        "reason": row.reason,
        "decided_by": row.decided_by,
        "created_ms": row.created_ms,
        "updated_ms": row.updated_ms,
    }


class Kyc:
    """KYC tier requests and their decisions."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock
        self.jurisdictions: JurisdictionRules = default_jurisdiction_rules()
        self.provider_secrets: dict[str, bytes] = {}
        # Told the username after every committed decision (a tier or jurisdiction may have
        # changed): scale-out mode drops its cached trading limits (strongroom.auth_fast).
        self.changed: list[Callable[[str], None]] = []

    @property
    def blocked_jurisdictions(self) -> frozenset[str]:
        """The jurisdictions whose residents are not onboarded: the blocked entries of the rules."""
        return self.jurisdictions.blocked()

    def standing(self, username: str) -> tuple[int, str | None] | None:
        """Return (KYC tier, jurisdiction of the latest approved review or None), None: no such user.

        The jurisdiction is the one the user was approved under (onboarding
        records it); a user whose tier was set without a review has none and
        gets the rules' default.
        """
        with self._sessions() as session:
            tier = session.scalar(select(User.kyc_tier).where(User.username == username))
            if tier is None:
                return None
            country = session.scalar(
                select(KycReview.country)
                .where(KycReview.username == username, KycReview.state == APPROVED)
                .order_by(KycReview.id.desc())
                .limit(1)
            )
            return tier, country

    def request(self, username: str, tier: int, country: str, provider: str = MANUAL) -> dict[str, Any]:
        """Ask for ``tier``; a blocked jurisdiction is recorded as rejected at once."""
        if isinstance(tier, bool) or not isinstance(tier, int) or tier not in TIERS or tier == 0:
            raise ComplianceError(
                ComplianceCode.KYC_INPUT_INVALID, f"tier was {tier!r}, must be 1..{TIERS[-1]}"
            )
        if provider != MANUAL and provider not in self.provider_secrets:
            raise ComplianceError(
                ComplianceCode.KYC_PROVIDER_UNKNOWN, f"provider {provider[:32]!r} is not set up"
            )
        refusal = jurisdiction_refusal(country, self.blocked_jurisdictions)
        if refusal is not None and not refusal.startswith("residents"):
            raise ComplianceError(ComplianceCode.KYC_INPUT_INVALID, refusal)
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = KycReview(
                username=username,
                requested_tier=tier,
                country=country.strip().upper(),
                provider=provider,
                state=PENDING if refusal is None else REJECTED,
                reason=refusal,
                decided_by=None if refusal is None else "policy:jurisdiction",
                created_ms=now_ms,
                updated_ms=now_ms,
            )
            session.add(row)
            session.flush()
            security_log.append(
                session,
                at_ms=now_ms,
                actor=username,
                action="kyc.request",
                subject=str(row.id),
                outcome=row.state,
                details={"tier": tier, "country": row.country, "provider": provider},
            )
            return review_json(row)

    def reviews(
        self, viewer: str, *, state: str | None = None, username: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Return reviews, newest first; ``viewer``'s own are left out unless ``username`` is the viewer."""
        assert 1 <= limit <= MAX_LIST, f"limit was {limit}"
        query = select(KycReview)
        query = (
            query.where(KycReview.username == username)
            if username is not None
            else query.where(KycReview.username != viewer)
        )
        if state is not None:
            if state not in REVIEW_STATES:
                raise ComplianceError(
                    ComplianceCode.KYC_INPUT_INVALID,
                    f"state was {state[:20]!r}, must be one of {', '.join(REVIEW_STATES)}",
                )
            query = query.where(KycReview.state == state)
        with self._sessions() as session:
            return [review_json(r) for r in session.scalars(query.order_by(KycReview.id.desc()).limit(limit))]

    def decide(self, officer: str, review_id: int, action: str, reason: str = "") -> dict[str, Any]:
        """Apply an officer's decision to a manual review (never one about the officer)."""
        with self._sessions.begin() as session:
            row = session.get(KycReview, review_id, with_for_update=True)
            if row is None or row.username == officer or row.provider != MANUAL:
                raise ComplianceError(
                    ComplianceCode.KYC_REVIEW_NOT_FOUND, f"review {review_id} does not exist"
                )
            review = self._apply(session, row, action, reason, officer)
        self._announce(review)
        return review

    def _announce(self, review: dict[str, Any]) -> None:
        """Tell the listeners whose standing a committed decision may have changed."""
        if review["state"] == APPROVED:
            for listener in self.changed:
                listener(review["username"])

    def provider_callback(self, provider: str, body: bytes, signature_hex: str) -> dict[str, Any]:
        """Apply a provider's signed answer once; a replayed event id answers the review as it is."""
        secret = self.provider_secrets.get(provider)
        if secret is None:
            raise ComplianceError(
                ComplianceCode.KYC_PROVIDER_UNKNOWN, f"provider {provider[:32]!r} is not set up"
            )
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature_hex.strip().lower().encode()):
            raise ComplianceError(ComplianceCode.KYC_SIGNATURE_INVALID, "callback signature does not verify")
        event_id, review_id, action, reason = _callback_fields(body)
        now_ms = self._clock()
        key = f"{provider}:{event_id}"
        try:
            with self._sessions.begin() as session:
                if session.get(KycProviderEvent, key) is not None:
                    return {"duplicate": True, "review": _review(session, review_id, provider)}
                row = session.get(KycReview, review_id, with_for_update=True)
                if row is None or row.provider != provider:
                    raise ComplianceError(
                        ComplianceCode.KYC_REVIEW_NOT_FOUND, f"review {review_id} does not exist"
                    )
                session.add(
                    KycProviderEvent(
                        id=key,
                        review_id=review_id,
                        received_ms=now_ms,
                        body_sha256=hashlib.sha256(body).hexdigest(),
                    )
                )
                review = self._apply(session, row, action, reason, f"provider:{provider}")
        except IntegrityError:
            # A concurrent copy of the same event committed first: answer as a replay.
            with self._sessions() as session:
                return {"duplicate": True, "review": _review(session, review_id, provider)}
        self._announce(review)
        return {"duplicate": False, "review": review}

    def _apply(
        self, session: Session, row: KycReview, action: str, reason: str, actor: str
    ) -> dict[str, Any]:
        target = TRANSITIONS.get((row.state, action))
        if target is None:
            raise ComplianceError(ComplianceCode.KYC_REVIEW_NOT_PENDING, f"review {row.id} is {row.state}")
        if action != "approve" and (not reason.strip() or len(reason) > REASON_MAX_LEN):
            raise ComplianceError(
                ComplianceCode.KYC_INPUT_INVALID, f"reason must be 1..{REASON_MAX_LEN} characters to {action}"
            )
        now_ms = self._clock()
        row.state, row.reason, row.decided_by, row.updated_ms = target, reason or None, actor[:64], now_ms
        details: dict[str, Any] = {"username": row.username, "tier": row.requested_tier}
        if target == APPROVED:
            # Onboarding records the jurisdiction the user is approved under and the rules' version.
            details["jurisdiction"], details["jurisdiction_rules"] = row.country, self.jurisdictions.label
            user = session.get(User, row.username, with_for_update=True)
            if user is None:
                raise ComplianceError(ComplianceCode.KYC_REVIEW_NOT_FOUND, f"user of review {row.id} is gone")
            details["from_tier"], user.kyc_tier = user.kyc_tier, row.requested_tier
            security_log.append(
                session,
                at_ms=now_ms,
                actor=actor[:64],
                action="kyc.tier_change",
                subject=row.username,
                details={"from": details["from_tier"], "to": row.requested_tier, "review": row.id,
                         "jurisdiction": row.country},
            )
        security_log.append(
            session,
            at_ms=now_ms,
            actor=actor[:64],
            action=f"kyc.{action}",
            subject=str(row.id),
            outcome=target,
            details=details,
        )
        session.flush()
        return review_json(row)


def _review(session: Session, review_id: int, provider: str) -> dict[str, Any]:
    row = session.get(KycReview, review_id)
    if row is None or row.provider != provider:
        raise ComplianceError(ComplianceCode.KYC_REVIEW_NOT_FOUND, f"review {review_id} does not exist")
    return review_json(row)


def callback_signature(secret: bytes, body: bytes) -> str:
    """Return the hex HMAC-SHA256 a provider sends with ``body`` (docs/compliance.md)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _callback_fields(body: bytes) -> tuple[str, int, str, str]:
    """Return (event id, review id, action, reason) of a verified callback body, or refuse it."""
    if len(body) > MAX_CALLBACK_BYTES:
        raise ComplianceError(
            ComplianceCode.KYC_INPUT_INVALID, f"callback body over {MAX_CALLBACK_BYTES} bytes"
        )
    try:
        payload = json.loads(body)
    except ValueError:
        raise ComplianceError(ComplianceCode.KYC_INPUT_INVALID, "callback body is not JSON") from None
    if not isinstance(payload, dict) or set(payload) - {"event_id", "review_id", "answer", "reason"}:
        raise ComplianceError(
            ComplianceCode.KYC_INPUT_INVALID,
            "callback must be an object of event_id, review_id, answer, reason",
        )
    event_id, review_id = payload.get("event_id"), payload.get("review_id")
    answer, reason = payload.get("answer"), payload.get("reason", "")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 120 or not event_id.isprintable():
        raise ComplianceError(
            ComplianceCode.KYC_INPUT_INVALID, "event_id must be 1..120 printable characters"
        )
    if isinstance(review_id, bool) or not isinstance(review_id, int) or not 0 < review_id < 2**63:
        raise ComplianceError(ComplianceCode.KYC_INPUT_INVALID, "review_id must be a positive integer")
    if answer not in ANSWERS or not isinstance(reason, str):
        raise ComplianceError(
            ComplianceCode.KYC_INPUT_INVALID, f"answer must be one of {', '.join(ANSWERS)}; reason a string"
        )
    return event_id, review_id, ANSWERS[answer], reason
