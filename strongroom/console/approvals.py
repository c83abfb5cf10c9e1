"""Approving in the browser: the approver's device key signs, the server never holds it.

A treasury officer registers their browser as an approval device: the page makes an
Ed25519 key pair with WebCrypto, keeps the private key non-extractable in IndexedDB,
and registers the public key (`POST /api/v1/approver-keys`, with TOTP). To approve,
the page recomputes the approval digest (docs/approvals.md) itself from the decoded
intent it shows - asset, amount, destination, policy rule, chain, fee cap - compares
it with the server's, and signs only if they agree; the server assembles the
`policies.approval.Approval` bytes around that signature and submits them through the
API's own approval endpoint, which verifies the signature against the registered key.
"""

from __future__ import annotations

from typing import Any

from flask import g
from werkzeug.datastructures import MultiDict

from policies.approval import Approval, ApprovalSubject, SubjectKind, approval_digest
from policies.signature_scheme import SignatureScheme
from strongroom.console import api

APPROVAL_VALIDITY_MS = 10 * 60 * 1000
MAX_SIGNATURE_HEX = 128


def subject_from_json(subject: dict[str, Any]) -> ApprovalSubject:
    """Rebuild the subject of a withdrawal from the API's ``subject`` object."""
    return ApprovalSubject(
        kind=SubjectKind[str(subject["kind"]).upper()], subject_id=subject["subject_id"],
        policy_id=subject["policy_id"], policy_version=int(subject["policy_version"]),
        asset=subject["asset"], amount_minor=int(subject["amount_minor"]),
        destination=subject["destination"], document_sha256=subject["document_sha256"],
        rule_id=subject["rule_id"], chain=subject["chain"], network=subject["network"],
        source_wallet=subject["source_wallet"], fee_cap_minor=int(subject["fee_cap_minor"]))


def pending_with_digests() -> list[dict[str, Any]]:
    """Return the withdrawals waiting for the caller, each with a digest to sign now."""
    answer = api.call("GET", "/api/v1/approvals/pending")
    now_ms = int(g.get("now_ms") or _now_ms())
    rows = []
    for w in answer.body.get("withdrawals", []):
        subject = subject_from_json(w["subject"])
        expires_ms = now_ms + APPROVAL_VALIDITY_MS
        rows.append(dict(w, signed_at_ms=now_ms, expires_at_ms=expires_ms,
                         digest=approval_digest(subject, now_ms, expires_ms).hex()))
    return rows


def signed_approval(withdrawal_id: str, username: str, form: MultiDict[str, str]) -> bytes:
    """Return the approval bytes around the device's signature; ValueError says what is wrong."""
    answer = api.call("GET", f"/api/v1/withdrawals/{withdrawal_id}")
    if not answer.ok:
        raise ValueError(answer.message)
    signature_hex = form.get("signature", "")
    if not signature_hex or len(signature_hex) > MAX_SIGNATURE_HEX:
        raise ValueError("no signature from this browser's approval key: register the device first")
    try:
        signature = bytes.fromhex(signature_hex)
        signed_at_ms, expires_at_ms = int(form.get("signed_at_ms", "")), int(form.get("expires_at_ms", ""))
    except ValueError:
        raise ValueError("the approval form was damaged: reload the page") from None
    approval = Approval(approver_id=username, key_id=form.get("key_id", "")[:128],
                        scheme=SignatureScheme.ED25519,
                        subject=subject_from_json(answer.body["withdrawal"]["subject"]),
                        signed_at_ms=signed_at_ms, expires_at_ms=expires_at_ms, signature=signature)
    return approval.to_bytes()


def _now_ms() -> int:
    from flask import current_app

    return int(current_app.extensions["strongroom.clock"]())
