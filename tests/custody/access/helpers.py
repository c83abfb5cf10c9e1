"""Test helpers: users with API keys and MFA, a client that signs every request, approver keys."""

from __future__ import annotations

import base64
import json as jsonlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from custody.api.services import AccessServices
from policies.api_key import Scope
from policies.approval import ApprovalSubject, SubjectKind, sign_approval
from policies.mfa import TOTP_STEP_S, totp_code
from policies.request_signing import sign_request
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes

ALL_SCOPES = frozenset(Scope)
STEP_MS = TOTP_STEP_S * 1000
APPROVAL_TTL_MS = 3_600_000


def access(app: Flask) -> AccessServices:
    found: AccessServices = app.extensions["strongroom.access"]
    return found


@dataclass
class SignedClient:
    """A test client acting as one user: signs requests, adds fresh TOTP codes on demand."""

    app: Flask
    client: FlaskClient
    clock: Any
    username: str
    key_id: str
    secret: str
    totp_secret: str | None = None
    approver_key: Ed25519PrivateKey | None = None
    approver_key_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        content_type: str | None = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        mfa: bool = False,
        mfa_code: str | None = None,
        idempotency_key: str | None = None,
        remote_addr: str = "127.0.0.1",
        timestamp_ms: int | None = None,
        secret: str | None = None,
    ) -> TestResponse:
        if json is not None:
            body = jsonlib.dumps(json).encode()
            content_type = content_type or "application/json"
        else:
            body = data.encode() if isinstance(data, str) else (data or b"")
        query_string = urlencode(query or {})
        all_headers = dict(headers or {})
        if mfa or mfa_code:
            all_headers["X-Strongroom-MFA"] = mfa_code or self.next_code()
        if idempotency_key is not None:
            all_headers["Idempotency-Key"] = idempotency_key
        # Every request gets its own millisecond, so identical requests are not replays.
        self.clock.advance(1)
        all_headers.update(
            sign_request(
                key_id=self.key_id,
                secret=secret or self.secret,
                timestamp_ms=self.clock.now_ms if timestamp_ms is None else timestamp_ms,
                method=method,
                path=path,
                query=query_string,
                body=body,
            )
        )
        return self.client.open(
            path,
            method=method,
            data=body,
            content_type=content_type,
            query_string=query_string,
            headers=all_headers,
            environ_base={"REMOTE_ADDR": remote_addr},
        )

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def next_code(self) -> str:
        """Move the clock to the next TOTP step (a step is single-use) and return its code."""
        assert self.totp_secret is not None, f"{self.username} has no MFA"
        self.clock.advance(STEP_MS)
        return totp_code(self.totp_secret, self.clock.now_ms)

    def approve_subject(
        self,
        subject: ApprovalSubject,
        *,
        signed_at_ms: int | None = None,
        ttl_ms: int = APPROVAL_TTL_MS,
        key: Ed25519PrivateKey | None = None,
        approver_id: str | None = None,
    ) -> str:
        """Return base64 of this user's signed approval of ``subject``."""
        private = key or self.approver_key
        assert private is not None, f"{self.username} has no approver key"
        at_ms = self.clock.now_ms if signed_at_ms is None else signed_at_ms
        approval = sign_approval(
            private,
            approver_id=approver_id or self.username,
            key_id=self.approver_key_id,
            subject=subject,
            signed_at_ms=at_ms,
            expires_at_ms=at_ms + ttl_ms,
        )
        return base64.b64encode(approval.to_bytes()).decode()


def make_user(
    app: Flask,
    client: FlaskClient,
    clock: Any,
    username: str,
    roles: set[Role] | frozenset[Role],
    *,
    kyc_tier: int = 2,
    scopes: frozenset[Scope] = ALL_SCOPES,
    mfa: bool = True,
    approver: bool = False,
) -> SignedClient:
    """Create a user with one API key (and a confirmed authenticator / approver key if asked)."""
    svc = access(app)
    _, key = svc.users.create_user(username, frozenset(roles), kyc_tier=kyc_tier, key_scopes=scopes)
    assert key is not None
    signed = SignedClient(app, client, clock, username, key.credentials.key_id, key.credentials.secret)
    if mfa:
        enrolment = svc.mfa.enrol(username)
        signed.totp_secret = enrolment.secret_base32
        clock.advance(STEP_MS)
        assert svc.mfa.confirm(username, totp_code(enrolment.secret_base32, clock.now_ms)) is None
    if approver:
        signed.approver_key = Ed25519PrivateKey.generate()
        signed.approver_key_id = f"{username}-k1"
        svc.approvers.register(
            username, signed.approver_key_id, ed25519_public_bytes(signed.approver_key), actor="test"
        )
    return signed


def withdrawal_subject(body: dict[str, Any]) -> ApprovalSubject:
    """Rebuild the approval subject from a withdrawal's JSON ``subject`` field."""
    s = body["subject"]
    return ApprovalSubject(
        kind=SubjectKind.WITHDRAWAL,
        subject_id=s["subject_id"],
        policy_id=s["policy_id"],
        policy_version=s["policy_version"],
        asset=s["asset"],
        amount_minor=int(s["amount_minor"]),
        destination=s["destination"],
        rule_id=s.get("rule_id", ""),
        chain=s.get("chain", ""),
        network=s.get("network", ""),
        source_wallet=s.get("source_wallet", ""),
        fee_cap_minor=int(s.get("fee_cap_minor", "0")),
    )


def policy_subject(body: dict[str, Any]) -> ApprovalSubject:
    s = body["subject"]
    return ApprovalSubject(
        kind=SubjectKind.POLICY_CHANGE,
        subject_id=s["subject_id"],
        policy_id=s["policy_id"],
        policy_version=s["policy_version"],
        document_sha256=s["document_sha256"],
    )


def assert_error(response: TestResponse, status: int, error: str) -> dict[str, Any]:
    """Check a refusal's status and stable error name; return its body."""
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    assert body["error"] == error, body
    assert isinstance(body["code"], int) and body["message"], body
    return dict(body)
