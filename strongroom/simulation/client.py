"""A simulated person at the API: signs every request, adds TOTP codes and approval signatures.

The simulation drives traders and treasury staff through the Flask test client,
so authentication, idempotency keys and the error mapping are exercised exactly
as a real client meets them, and a changed API shows up as a clear breakage.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask.testing import FlaskClient

from policies.approval import ApprovalSubject, SubjectKind, sign_approval
from policies.mfa import TOTP_STEP_S, totp_code
from policies.request_signing import sign_request
from strongroom.simulation.clock import SimClock

TOTP_STEP_MS = TOTP_STEP_S * 1000
APPROVAL_TTL_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Reply:
    """What the API answered: status and JSON body (an empty dict when there was none)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Person:
    """One user's credentials: API key, TOTP secret and (for approvers) an Ed25519 approval key."""

    username: str
    key_id: str
    secret: str
    totp_secret: str | None = None
    approver_key: Ed25519PrivateKey | None = None
    approver_key_id: str = ""

    def request(self, client: FlaskClient, clock: SimClock, method: str, path: str, *,
                body: Any = None, mfa: bool = False, idempotency_key: str | None = None) -> Reply:
        """Send one signed request (each on its own millisecond, so none is a replay)."""
        raw = b"" if body is None else json.dumps(body).encode()
        headers: dict[str, str] = {}
        if mfa:
            headers["X-Strongroom-MFA"] = self.next_code(clock)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        clock.advance(1)
        headers.update(sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=clock.now_ms,
                                    method=method, path=path, query="", body=raw))
        response = client.open(path, method=method, data=raw,
                               content_type="application/json" if body is not None else None,
                               headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        found = response.get_json(silent=True)
        return Reply(response.status_code, found if isinstance(found, dict) else {})

    def next_code(self, clock: SimClock) -> str:
        """Move to the next TOTP step (a step's code is single-use) and return its code."""
        assert self.totp_secret is not None, f"{self.username} has no MFA"
        clock.advance(TOTP_STEP_MS)
        return totp_code(self.totp_secret, clock.now_ms)

    def approve(self, subject: ApprovalSubject, now_ms: int) -> str:
        """Return this approver's signed approval of ``subject`` (hex of the canonical bytes)."""
        assert self.approver_key is not None, f"{self.username} is no approver"
        approval = sign_approval(self.approver_key, approver_id=self.username, key_id=self.approver_key_id,
                                 subject=subject, signed_at_ms=now_ms,
                                 expires_at_ms=now_ms + APPROVAL_TTL_MS)
        return base64.b64encode(approval.to_bytes()).decode()


def withdrawal_subject(withdrawal: dict[str, Any]) -> ApprovalSubject:
    """Rebuild the approval subject from a withdrawal's JSON ``subject`` field."""
    s = withdrawal["subject"]
    return ApprovalSubject(kind=SubjectKind.WITHDRAWAL, subject_id=s["subject_id"], policy_id=s["policy_id"],
                           policy_version=s["policy_version"], asset=s["asset"],
                           amount_minor=int(s["amount_minor"]), destination=s["destination"],
                           rule_id=s.get("rule_id", ""), chain=s.get("chain", ""),
                           network=s.get("network", ""), source_wallet=s.get("source_wallet", ""),
                           fee_cap_minor=int(s.get("fee_cap_minor", "0")))
