"""The travel rule's exchange with counterparty VASPs, TRP-style: inquiry, callback, notification.

A withdrawal at or above the travel-rule threshold whose data names a
beneficiary VASP (by LEI) in the directory opens an inquiry in the
transaction that creates it (`TravelRule.check` -> `open_inquiry`), and the
withdrawal waits as ``delayed`` with no release time
(`Withdrawals.release_waiting`). Then:

1. ``send_inquiries`` POSTs each unsent inquiry to the VASP's endpoint: the
   IVMS101 message and the transfer (asset, amount, destination), signed.
2. The VASP answers later with a signed callback (`callback`, the API's
   ``POST /api/v1/travel-rule/callback/{lei}``): ``approved`` gives the
   withdrawal its release time (the policy decides again at release:
   approvals, delays); ``rejected`` closes it as rejected and voids its hold
   (nothing reaches the chain). An inquiry unanswered by its deadline is
   ``expired`` by ``expire_due`` with the same effect as a rejection.
3. Once sent, ``notify`` tells the VASP the transaction id.

Every message is JSON signed with HMAC-SHA256 under the secret shared with
that VASP (header ``X-TRP-Signature``, hex, over the exact body bytes),
compared in constant time. A callback is idempotent: the same answer again
changes nothing; a different answer to a decided inquiry is refused.
Unhosted wallets (no beneficiary VASP) need the user's attestation instead
(`travel_rule.validate_transfer_data`, ``unhosted_attestation``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import TravelRuleInquiry
from custody.compliance.travel_rule import TravelRule
from custody.withdrawals.service import Withdrawals

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
SIGNATURE_HEADER = "X-TRP-Signature"
DEFAULT_TIMEOUT_MS = 24 * 60 * 60 * 1000
MAX_CALLBACK_BYTES = 16 * 1024
ACTOR = "compliance:travel-rule"
BAD_SIGNATURE = "unknown VASP or bad signature"


@dataclass(frozen=True, slots=True)
class CounterpartyVasp:
    """A VASP we exchange travel-rule messages with: its LEI, name, endpoint and shared secret."""

    lei: str
    name: str
    url: str
    secret: bytes

    def __post_init__(self) -> None:
        assert self.url.startswith(("http://", "https://")), f"VASP {self.lei} endpoint must be HTTP(S)"

    def __repr__(self) -> str:
        return f"CounterpartyVasp(lei={self.lei!r}, name={self.name!r}, url={self.url!r})"


class Transport(Protocol):
    """Delivers one signed message to a VASP and returns its HTTP status."""

    def post(self, url: str, body: bytes, signature: str) -> int: ...


class HttpTransport:
    """POSTs messages over HTTP(S) with urllib (timeouts bound a hang)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def post(self, url: str, body: bytes, signature: str) -> int:
        assert url.startswith(("http://", "https://")), "a VASP endpoint is an HTTP(S) URL"
        request = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 - checked
            "Content-Type": "application/json", SIGNATURE_HEADER: signature})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - checked
            return int(response.status)


def sign(secret: bytes, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``body`` under ``secret`` (both directions)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _canonical(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


class TravelRuleExchange:
    """Inquiries to counterparty VASPs; the withdrawals they hold wait for the answers."""

    def __init__(self, sessions: sessionmaker[Session], travel_rule: TravelRule, withdrawals: Withdrawals,
                 directory: Mapping[str, CounterpartyVasp], clock: Callable[[], int],
                 transport: Transport | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        assert timeout_ms > 0
        self._sessions = sessions
        self._travel_rule = travel_rule
        self._withdrawals = withdrawals
        self.directory = {lei.upper(): vasp for lei, vasp in directory.items()}
        self._clock = clock
        self._transport = transport or HttpTransport()
        self.timeout_ms = timeout_ms
        self._notify_lock = threading.Lock()  # one notification per inquiry from this process

    # -- opening (inside the withdrawal's transaction) ----------------------------------------

    def open_inquiry(self, session: Session, username: str, withdrawal_id: str,
                     record: Mapping[str, Any]) -> bool:
        """Record an inquiry to the beneficiary's VASP; refuse a VASP we cannot reach."""
        vasp = record["beneficiary_vasp"]
        lei = (vasp or {}).get("lei")
        if lei is None or lei not in self.directory:
            raise ComplianceError(ComplianceCode.TRAVEL_RULE_COUNTERPARTY_UNKNOWN,
                                  "travel_rule.beneficiary_vasp must name (by LEI) a VASP we exchange "
                                  "travel-rule messages with; for a wallet of your own use "
                                  "unhosted_attestation")
        now_ms = self._clock()
        session.add(TravelRuleInquiry(withdrawal_id=withdrawal_id, username=username, vasp_lei=lei,
                                      state=PENDING, deadline_ms=now_ms + self.timeout_ms,
                                      created_ms=now_ms, updated_ms=now_ms))
        security_log.append(session, at_ms=now_ms, actor=username, action="compliance.travel_rule.inquiry",
                            subject=withdrawal_id, outcome=PENDING, details={"vasp": lei})
        return True

    # -- sending --------------------------------------------------------------------------------

    def send_inquiries(self) -> list[str]:
        """Send every pending inquiry not yet sent; return the withdrawal ids delivered (2xx)."""
        with self._sessions() as session:
            due = list(session.scalars(select(TravelRuleInquiry).where(
                TravelRuleInquiry.state == PENDING, TravelRuleInquiry.sent_ms.is_(None))
                .order_by(TravelRuleInquiry.created_ms).limit(200)))
        delivered = []
        for inquiry in due:
            vasp = self.directory.get(inquiry.vasp_lei)
            if vasp is None:
                continue
            message = {"type": "inquiry", "transfer_id": inquiry.withdrawal_id,
                       **self._travel_rule.export(ACTOR, inquiry.withdrawal_id)}
            body = _canonical(message)
            try:
                status = self._transport.post(vasp.url, body, sign(vasp.secret, body))
            except OSError:
                continue  # retried on the next run; the deadline still runs
            if 200 <= status < 300:
                with self._sessions.begin() as session:
                    row = session.get(TravelRuleInquiry, inquiry.withdrawal_id, with_for_update=True)
                    if row is not None and row.sent_ms is None:
                        row.sent_ms = row.updated_ms = self._clock()
                delivered.append(inquiry.withdrawal_id)
        return delivered

    def run(self) -> dict[str, list[str]]:
        """The scheduled job (strongroom.jobs): send unsent inquiries, then expire overdue ones."""
        return {"sent": self.send_inquiries(), "expired": self.expire_due()}

    def notify(self, withdrawal_id: str, txid: str) -> bool:
        """Tell the VASP of an approved inquiry the transaction id (once); True if delivered now.

        Called by the withdrawal dispatcher each round while the transaction is in flight
        (``WithdrawalDispatcher(on_sent=...)``): a refused or failed delivery returns False and
        is made again on the next call; a delivered one is recorded and never repeated.
        """
        with self._notify_lock:
            return self._notify(withdrawal_id, txid)

    def _notify(self, withdrawal_id: str, txid: str) -> bool:
        with self._sessions() as session:
            row = session.get(TravelRuleInquiry, withdrawal_id)
            if row is None or row.state != APPROVED or row.notified_ms is not None:
                return False
            vasp = self.directory.get(row.vasp_lei)
        if vasp is None:
            return False
        body = _canonical({"type": "notification", "transfer_id": withdrawal_id, "txid": txid})
        try:
            status = self._transport.post(vasp.url, body, sign(vasp.secret, body))
        except OSError:  # urllib's HTTPError (4xx/5xx) and URLError are OSErrors: retried later
            return False
        if not 200 <= status < 300:
            return False
        with self._sessions.begin() as session:
            found = session.get(TravelRuleInquiry, withdrawal_id, with_for_update=True)
            assert found is not None
            found.txid, found.notified_ms = txid[:128], self._clock()
            security_log.append(session, at_ms=found.notified_ms, actor=ACTOR,
                                action="compliance.travel_rule.notify", subject=withdrawal_id,
                                details={"vasp": found.vasp_lei, "txid": txid[:128]})
        return True

    # -- answers --------------------------------------------------------------------------------

    def callback(self, lei: str, body: bytes, signature_hex: str) -> dict[str, Any]:
        """Apply a VASP's signed answer to one of our inquiries (idempotent)."""
        vasp = self.directory.get(lei.upper()[:20])
        if vasp is None:
            raise ComplianceError(ComplianceCode.TRAVEL_RULE_SIGNATURE_INVALID, BAD_SIGNATURE)
        expected = sign(vasp.secret, body)
        if not hmac.compare_digest(expected.encode(), signature_hex.strip().lower().encode()):
            raise ComplianceError(ComplianceCode.TRAVEL_RULE_SIGNATURE_INVALID, BAD_SIGNATURE)
        transfer_id, answer, reason = _callback_fields(body)
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(TravelRuleInquiry, transfer_id, with_for_update=True)
            if row is None or row.vasp_lei != vasp.lei.upper():
                raise ComplianceError(ComplianceCode.TRAVEL_RULE_NOT_FOUND,
                                      f"no inquiry {transfer_id[:64]!r}")
            if row.state == answer:
                return _inquiry_json(row) | {"duplicate": True}
            if row.state != PENDING:
                raise ComplianceError(ComplianceCode.TRAVEL_RULE_INQUIRY_DECIDED,
                                      f"inquiry {transfer_id[:64]} is already {row.state}")
            row.state, row.reason, row.updated_ms = answer, reason[:256] or None, now_ms
            security_log.append(session, at_ms=now_ms, actor=f"vasp:{vasp.lei}",
                                action="compliance.travel_rule.answer", subject=transfer_id, outcome=answer,
                                details={"reason": reason[:256]})
            if answer == APPROVED:
                self._withdrawals.release_waiting(session, transfer_id, now_ms)
            out = _inquiry_json(row) | {"duplicate": False}
        if answer == REJECTED:
            self._withdrawals.refuse_waiting(transfer_id, actor=ACTOR,
                                             reason=f"beneficiary VASP rejected: {reason[:200]}")
        return out

    def expire_due(self) -> list[str]:
        """Expire pending inquiries past their deadline and refuse their withdrawals; return their ids."""
        now_ms = self._clock()
        expired = []
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(TravelRuleInquiry).where(
                TravelRuleInquiry.state == PENDING, TravelRuleInquiry.deadline_ms <= now_ms)
                .with_for_update().limit(200)))
            for row in rows:
                row.state, row.reason, row.updated_ms = EXPIRED, "no answer by the deadline", now_ms
                security_log.append(session, at_ms=now_ms, actor=ACTOR,
                                    action="compliance.travel_rule.answer", subject=row.withdrawal_id,
                                    outcome=EXPIRED, details={"vasp": row.vasp_lei})
                expired.append(row.withdrawal_id)
        for withdrawal_id in expired:
            self._withdrawals.refuse_waiting(withdrawal_id, actor=ACTOR,
                                             reason="beneficiary VASP did not answer the travel-rule inquiry")
        return expired

    def get(self, withdrawal_id: str) -> dict[str, Any] | None:
        with self._sessions() as session:
            row = session.get(TravelRuleInquiry, withdrawal_id)
            return None if row is None else _inquiry_json(row)


def _inquiry_json(row: TravelRuleInquiry) -> dict[str, Any]:
    return {"withdrawal_id": row.withdrawal_id, "vasp_lei": row.vasp_lei, "state": row.state,
            "deadline_ms": row.deadline_ms, "sent_ms": row.sent_ms, "reason": row.reason, "txid": row.txid}


def _callback_fields(body: bytes) -> tuple[str, str, str]:
    if len(body) > MAX_CALLBACK_BYTES:
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID,
                              f"callback body over {MAX_CALLBACK_BYTES} bytes")
    try:
        payload = json.loads(body)
    except ValueError:
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID, "callback body is not JSON") from None
    if (not isinstance(payload, dict) or set(payload) - {"type", "transfer_id", "answer", "reason"}
            or payload.get("type") != "callback"):
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID,
                              "callback must be an object of type (callback), transfer_id, answer, reason")
    transfer_id, answer, reason = payload.get("transfer_id"), payload.get("answer"), payload.get("reason", "")
    if not isinstance(transfer_id, str) or not 0 < len(transfer_id) <= 120:
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID, "transfer_id must be 1..120 characters")
    if answer not in (APPROVED, REJECTED) or not isinstance(reason, str):
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID, "answer must be approved or rejected")
    return transfer_id, answer, reason
