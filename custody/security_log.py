"""The append-only, hash-chained security log (a neutral module: every custody layer writes it).

Each event's hash covers the previous hash and the event's canonical JSON, so
removing or editing an event breaks every later hash. The table also has
database triggers that reject UPDATE and DELETE. Details never hold secrets:
callers pass ids, codes and amounts, and `append` refuses keys that look
like secret material.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, String, Text, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from custody.db import Base

GENESIS_HASH = "0" * 64
ACTOR_MAX_LEN = 64  # custody.access.models.USERNAME_MAX_LEN
HASH_HEX_LEN = 64
MAX_PAGE = 1000
MAX_SUBJECT_CHARS = 256
_FORBIDDEN_DETAIL_KEYS = frozenset({"secret", "password", "passphrase", "private_key", "totp_secret"})


class SecurityEvent(Base):
    """One entry of the append-only, hash-chained security log (triggers reject changes)."""

    __tablename__ = "access_security_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX_LEN))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text)  # Canonical JSON; never secrets.
    prev_hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))


@dataclass(frozen=True, slots=True)
class SecurityEventView:
    """One security log entry as the API shows it."""

    seq: int
    at_ms: int
    actor: str
    action: str
    subject: str
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at_ms": self.at_ms,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "outcome": self.outcome,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def event_hash(
    prev_hash: str,
    seq: int,
    at_ms: int,
    actor: str,
    action: str,
    subject: str,
    outcome: str,
    details_json: str,
) -> str:
    """Return the SHA-256 hex chaining one event to its predecessor."""
    body = json.dumps(
        [seq, at_ms, actor, action, subject, outcome, details_json], separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(f"strongroom/security-log/v1\n{prev_hash}\n{body}".encode()).hexdigest()


def append(
    session: Session,
    *,
    at_ms: int,
    actor: str,
    action: str,
    subject: str = "",
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
) -> SecurityEvent:
    """Append one event inside the caller's transaction."""
    payload = dict(details or {})
    leaked = _FORBIDDEN_DETAIL_KEYS & {k.lower() for k in payload}
    assert not leaked, f"security log details must not carry secrets: {sorted(leaked)}"
    if session.get_bind().dialect.name == "postgresql":
        # Appenders must not read the same tip; SQLite's BEGIN IMMEDIATE already serialises.
        session.execute(text("LOCK TABLE access_security_log IN EXCLUSIVE MODE"))
    last = session.scalar(select(SecurityEvent).order_by(SecurityEvent.seq.desc()).limit(1))
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS_HASH if last is None else last.hash
    details_json = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    row = SecurityEvent(
        seq=seq,
        at_ms=at_ms,
        actor=actor[:64],
        action=action,
        subject=subject[:MAX_SUBJECT_CHARS],
        outcome=outcome,
        details=details_json,
        prev_hash=prev,
        hash="",
    )
    row.hash = event_hash(prev, seq, at_ms, row.actor, action, row.subject, outcome, details_json)
    session.add(row)
    return row


def page(session: Session, *, after_seq: int = 0, limit: int = 100) -> list[SecurityEventView]:
    """Return events after `after_seq`, oldest first."""
    assert 1 <= limit <= MAX_PAGE, f"limit was {limit}"
    rows = session.scalars(
        select(SecurityEvent).where(SecurityEvent.seq > after_seq).order_by(SecurityEvent.seq).limit(limit)
    )
    return [_view(row) for row in rows]


def verify_chain(session: Session) -> int:
    """Recompute every hash; return the number of events, or raise AssertionError at the first break."""
    prev, count = GENESIS_HASH, 0
    for row in session.scalars(select(SecurityEvent).order_by(SecurityEvent.seq)):
        count += 1
        assert row.seq == count, f"security log seq {row.seq} where {count} was expected"
        expected = event_hash(
            prev, row.seq, row.at_ms, row.actor, row.action, row.subject, row.outcome, row.details
        )
        assert row.prev_hash == prev and row.hash == expected, f"security log broken at seq {row.seq}"
        prev = row.hash
    return count


def _view(row: SecurityEvent) -> SecurityEventView:
    return SecurityEventView(
        row.seq,
        row.at_ms,
        row.actor,
        row.action,
        row.subject,
        row.outcome,
        json.loads(row.details),
        row.prev_hash,
        row.hash,
    )
