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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A signed request not sent yet: sent later it is a delayed (or reordered) delivery."""

    method: str
    path: str
    raw: bytes
    json: bool
    headers: tuple[tuple[str, str], ...]


def send(client: FlaskClient, prepared: Prepared) -> Reply:
    """Deliver a signed request exactly as it was signed."""
    response = client.open(prepared.path, method=prepared.method, data=prepared.raw,
                           content_type="application/json" if prepared.json else None,
                           headers=dict(prepared.headers), environ_base={"REMOTE_ADDR": "127.0.0.1"})
    found = response.get_json(silent=True)
    return Reply(response.status_code, found if isinstance(found, dict) else {})


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
                body: Any = None, mfa: bool = False, idempotency_key: str | None = None,
                skew_ms: int = 0) -> Reply:
        """Send one signed request (each on its own millisecond, so none is a replay)."""
        return send(client, self.prepare(clock, method, path, body=body, mfa=mfa,
                                         idempotency_key=idempotency_key, skew_ms=skew_ms))

    def prepare(self, clock: SimClock, method: str, path: str, *, body: Any = None, mfa: bool = False,
                idempotency_key: str | None = None, skew_ms: int = 0,
                same_totp_step: bool = False) -> Prepared:
        """Sign a request now (with the client's clock ``skew_ms`` off the server's) to send later.

        ``same_totp_step`` uses the current TOTP step's code instead of moving to the next step, so
        several people's requests can be signed within one receive window (a race)."""
        raw = b"" if body is None else json.dumps(body).encode()
        headers: dict[str, str] = {}
        if mfa:
            assert self.totp_secret is not None, f"{self.username} has no MFA"
            headers["X-Strongroom-MFA"] = (totp_code(self.totp_secret, clock.now_ms + skew_ms)
                                           if same_totp_step else self.next_code(clock, skew_ms))
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        clock.advance(1)
        headers.update(sign_request(key_id=self.key_id, secret=self.secret,
                                    timestamp_ms=clock.now_ms + skew_ms,
                                    method=method, path=path, query="", body=raw))
        return Prepared(method, path, raw, body is not None, tuple(sorted(headers.items())))

    def next_code(self, clock: SimClock, skew_ms: int = 0) -> str:
        """Move to the next TOTP step (a step's code is single-use) and return its code."""
        assert self.totp_secret is not None, f"{self.username} has no MFA"
        clock.advance(TOTP_STEP_MS)
        return totp_code(self.totp_secret, clock.now_ms + skew_ms)

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
