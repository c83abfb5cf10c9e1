"""Compliance tables: sanctions lists, alerts, cases, comments, KYC reviews, deposit decisions."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base
from custody.money import U256

ALERT_ID_MAX_LEN = 80
SUBJECT_MAX_LEN = 256
REASON_MAX_LEN = 512
COMMENT_MAX_LEN = 4000


class SanctionsListVersion(Base):
    """One loaded sanctions list: its digest, its entries (canonical JSON) and its diff to the previous."""

    __tablename__ = "compliance_sanctions_lists"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64))
    entry_count: Mapped[int] = mapped_column(Integer)
    address_count: Mapped[int] = mapped_column(Integer)
    entries: Mapped[str] = mapped_column(Text)  # JSON list of SdnEntry.to_json(), by ent_num.
    diff: Mapped[str] = mapped_column(Text)  # ListDiff.to_json() against the previous version.
    loaded_by: Mapped[str] = mapped_column(String(64))
    loaded_ms: Mapped[int] = mapped_column(BigInteger)


class SanctionedAddress(Base):
    """A digital-currency address of a list version, in canonical form (custody.compliance.addresses)."""

    __tablename__ = "compliance_sanctioned_addresses"
    __table_args__ = (Index("ix_compliance_sanctioned_addresses_lookup", "version", "family", "normalised"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("compliance_sanctions_lists.version"))
    family: Mapped[str] = mapped_column(String(16))
    normalised: Mapped[str] = mapped_column(String(SUBJECT_MAX_LEN))
    currency: Mapped[str] = mapped_column(String(16))
    ent_num: Mapped[int] = mapped_column(Integer)


class ComplianceCase(Base):
    """An investigation of one user: open -> escalated -> closed (docs/compliance.md)."""

    __tablename__ = "compliance_cases"
    __table_args__ = (Index("ix_compliance_cases_username_state", "username", "state"),
                      Index("ix_compliance_cases_state", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    score: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(256))
    assignee: Mapped[str | None] = mapped_column(String(64))
    opened_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    closed_by: Mapped[str | None] = mapped_column(String(64))
    closed_ms: Mapped[int | None] = mapped_column(BigInteger)
    resolution: Mapped[str | None] = mapped_column(String(32))
    close_reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LEN))


class ComplianceAlert(Base):
    """A scored finding with its evidence; idempotent by id (the fact that raised it)."""

    __tablename__ = "compliance_alerts"
    __table_args__ = (Index("ix_compliance_alerts_case_id", "case_id"),
                      Index("ix_compliance_alerts_username", "username"))

    id: Mapped[str] = mapped_column(String(ALERT_ID_MAX_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    rule_id: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(64))
    subject_kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX_LEN))
    score: Mapped[int] = mapped_column(Integer)
    evidence: Mapped[str] = mapped_column(Text)  # JSON object.
    created_ms: Mapped[int] = mapped_column(BigInteger)
    case_id: Mapped[int] = mapped_column(ForeignKey("compliance_cases.id"))


class ComplianceCaseComment(Base):
    """A note on a case; comments are never edited or deleted."""

    __tablename__ = "compliance_case_comments"
    __table_args__ = (Index("ix_compliance_case_comments_case_id", "case_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("compliance_cases.id"))
    author: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # comment, assign, escalate, close
    body: Mapped[str] = mapped_column(Text)
    at_ms: Mapped[int] = mapped_column(BigInteger)


class KycReview(Base):
    """A request to move a user to a KYC tier, decided by a provider (``manual``: an officer)."""

    __tablename__ = "compliance_kyc_reviews"
    __table_args__ = (Index("ix_compliance_kyc_reviews_username", "username"),
                      Index("ix_compliance_kyc_reviews_state", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    requested_tier: Mapped[int] = mapped_column(Integer)
    country: Mapped[str] = mapped_column(String(2))
    provider: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LEN))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class KycProviderEvent(Base):
    """A provider callback already applied (idempotency: the same event id is applied once)."""

    __tablename__ = "compliance_kyc_provider_events"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)  # "<provider>:<event id>"
    review_id: Mapped[int] = mapped_column(ForeignKey("compliance_kyc_reviews.id"))
    body_sha256: Mapped[str] = mapped_column(String(64))
    received_ms: Mapped[int] = mapped_column(BigInteger)


class ComplianceDeposit(Base):
    """Compliance's decision on one incoming deposit: credited, held over the tier cap, or quarantined.

    Written in the deposit watcher's transaction that first records the
    deposit, so a deposit is never booked before it is decided. The decision
    never changes; releasing a tier-cap hold is recorded beside it.
    """

    __tablename__ = "compliance_deposits"
    __table_args__ = (Index("ix_compliance_deposits_owner_decided", "owner", "decided_ms"),
                      Index("ix_compliance_deposits_decision", "decision"))

    deposit_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(U256)
    usd_cents: Mapped[int | None] = mapped_column(BigInteger)  # None: no price, so the cap is undecidable.
    sender: Mapped[str] = mapped_column(String(SUBJECT_MAX_LEN))
    tier: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(24))  # credit, held_tier_cap, quarantined
    reason: Mapped[str] = mapped_column(String(REASON_MAX_LEN))
    alert_id: Mapped[str | None] = mapped_column(String(ALERT_ID_MAX_LEN))
    decided_ms: Mapped[int] = mapped_column(BigInteger)
    released_by: Mapped[str | None] = mapped_column(String(64))
    released_ms: Mapped[int | None] = mapped_column(BigInteger)
    release_reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LEN))


class PersonalDataRecord(Base):
    """A user's identity record, envelope-encrypted (custody.compliance.pii): no clear text in any column."""

    __tablename__ = "compliance_personal_data"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    kek_name: Mapped[str] = mapped_column(String(64))
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[str] = mapped_column(Text)  # the keystore's blob of the record's data key
    ciphertext: Mapped[str] = mapped_column(Text)  # base64 of nonce || AES-256-GCM ciphertext || tag
    revision: Mapped[int] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class TravelRuleRecord(Base):
    """A withdrawal's IVMS101 originator/beneficiary data, envelope-encrypted (compliance.travel_rule)."""

    __tablename__ = "compliance_travel_rule"
    __table_args__ = (Index("ix_compliance_travel_rule_username", "username"),)

    withdrawal_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    kek_name: Mapped[str] = mapped_column(String(64))
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[str] = mapped_column(Text)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class TravelRuleInquiry(Base):
    """A TRP-style inquiry to the beneficiary's VASP; its withdrawal waits until it is approved."""

    __tablename__ = "compliance_travel_rule_inquiries"
    __table_args__ = (Index("ix_compliance_travel_rule_inquiries_state", "state"),)

    withdrawal_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    vasp_lei: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(16))  # pending, approved, rejected, expired
    deadline_ms: Mapped[int] = mapped_column(BigInteger)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(256))
    txid: Mapped[str | None] = mapped_column(String(128))
    notified_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
