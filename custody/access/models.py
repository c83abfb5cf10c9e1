"""Access-control tables: users, API keys, MFA, approver keys, replay nonces,
idempotency records, policy documents and proposals, approvals (the security log: custody.security_log).

Secrets (API-key HMAC secrets, TOTP secrets) are stored only as keystore
ciphertext; nothing in these tables is a secret in clear.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base

USERNAME_MAX_LEN = 64
KEY_ID_MAX_LEN = 128
HASH_HEX_LEN = 64
CIPHERTEXT_MAX_LEN = 1024


class User(Base):
    """A person or service. The username is the identity used everywhere else
    (ledger account owner, approver id, initiator id)."""

    __tablename__ = "access_users"

    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LEN), primary_key=True)
    roles: Mapped[str] = mapped_column(String(128))  # Sorted, comma-separated role names.
    kyc_tier: Mapped[int] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    disabled_ms: Mapped[int | None] = mapped_column(BigInteger)


class ApiKeyRow(Base):
    """An API key; the HMAC secret is keystore ciphertext bound to the key id."""

    __tablename__ = "access_api_keys"
    __table_args__ = (Index("ix_access_api_keys_username", "username"),)

    key_id: Mapped[str] = mapped_column(String(KEY_ID_MAX_LEN), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    label: Mapped[str] = mapped_column(String(128))
    secret_ciphertext: Mapped[str] = mapped_column(String(CIPHERTEXT_MAX_LEN))
    scopes: Mapped[str] = mapped_column(String(64))  # Sorted, comma-separated.
    ip_allowlist: Mapped[str] = mapped_column(Text)  # Comma-separated networks; empty = any.
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger)


class MfaRow(Base):
    """A user's TOTP enrolment and the verification state (`policies.mfa.TotpState`)."""

    __tablename__ = "access_mfa"

    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"), primary_key=True)
    secret_ciphertext: Mapped[str] = mapped_column(String(CIPHERTEXT_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    confirmed_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    locked_until_ms: Mapped[int | None] = mapped_column(BigInteger)


class ApproverKeyRow(Base):
    """A registered approver public key; one public key belongs to one user."""

    __tablename__ = "access_approver_keys"
    __table_args__ = (Index("ix_access_approver_keys_username", "username"),)

    key_id: Mapped[str] = mapped_column(String(KEY_ID_MAX_LEN), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    scheme: Mapped[str] = mapped_column(String(32))
    public_key_hex: Mapped[str] = mapped_column(String(512), unique=True)
    registered_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger)


class ReplayNonce(Base):
    """A signed request seen within its receive window (the DB-backed replay cache)."""

    __tablename__ = "access_replay_nonces"
    __table_args__ = (Index("ix_access_replay_nonces_expires_ms", "expires_ms"),)

    nonce: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_ms: Mapped[int] = mapped_column(BigInteger)


class IdempotencyRecord(Base):
    """The stored result of a state-changing POST, keyed by user and Idempotency-Key."""

    __tablename__ = "access_idempotency"
    __table_args__ = (
        Index("uq_access_idempotency_username_key", "username", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LEN))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    request_sha256: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class PolicyDocumentRow(Base):
    """One version of a withdrawal policy; the highest activated version is in force."""

    __tablename__ = "policy_documents"

    policy_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    document: Mapped[str] = mapped_column(Text)  # Canonical JSON bytes, UTF-8.
    digest: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    activated_ms: Mapped[int] = mapped_column(BigInteger)
    proposal_id: Mapped[str | None] = mapped_column(String(KEY_ID_MAX_LEN))


class PolicyChangeRow(Base):
    """A proposed policy change waiting for an admin quorum."""

    __tablename__ = "policy_change_proposals"

    proposal_id: Mapped[str] = mapped_column(String(KEY_ID_MAX_LEN), primary_key=True)
    policy_id: Mapped[str] = mapped_column(String(128))
    base_version: Mapped[int] = mapped_column(BigInteger)
    new_version: Mapped[int] = mapped_column(BigInteger)
    document: Mapped[str] = mapped_column(Text)
    document_sha256: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    proposer: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    state: Mapped[str] = mapped_column(String(16))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    closed_ms: Mapped[int | None] = mapped_column(BigInteger)


APPROVAL_SUBJECT_MAX_LEN = 160


class ApprovalRow(Base):
    """One approval of anything approvable (custody.access.approvals is the only writer).

    ``approval`` is a signed ``policies.approval.Approval`` (withdrawals, refills, policy
    changes); it is NULL for an approval the API confirmed with the approver's MFA code
    (ledger proposals). The subject tables are several, so ``subject_id`` has no foreign key.
    """

    __tablename__ = "approvals"
    __table_args__ = (
        Index("ix_approvals_kind_subject_id", "kind", "subject_id"),
        # custody.access.approvals.ApprovalKind.
        CheckConstraint("kind IN ('withdrawal', 'refill', 'policy_change', 'ledger_proposal', 'freeze_lift', "
                        "'halt_lift')", name="kind"),
    )

    approval_id: Mapped[str] = mapped_column(String(HASH_HEX_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    # Wide enough for a freeze id (custody.freezes.FREEZE_ID_MAX_LEN, migration 0026_lift_approvals).
    subject_id: Mapped[str] = mapped_column(String(APPROVAL_SUBJECT_MAX_LEN))
    approver: Mapped[str] = mapped_column(String(USERNAME_MAX_LEN))
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_MAX_LEN))
    approval: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class LedgerProposalRow(Base):
    """A manual ledger operation (transfers, a mint, a correction) awaiting a second admin.

    ``transfers`` is the JSON list of the transfer requests, applied all-or-nothing when
    another admin approves with MFA; ``results`` is what the ledger answered.
    """

    __tablename__ = "ledger_proposals"
    __table_args__ = (Index("ix_ledger_proposals_state", "state"),)

    proposal_id: Mapped[str] = mapped_column(String(KEY_ID_MAX_LEN), primary_key=True)
    proposer: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    reason: Mapped[str] = mapped_column(String(256))
    transfers: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    decided_by: Mapped[str | None] = mapped_column(String(USERNAME_MAX_LEN))
    decided_ms: Mapped[int | None] = mapped_column(BigInteger)
    results: Mapped[str | None] = mapped_column(Text)
