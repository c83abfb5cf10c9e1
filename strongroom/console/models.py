"""Console tables: a person's password (argon2id hash) and their browser sessions.

Neither table holds a secret in clear: the password is an argon2id hash and a
session is stored under the SHA-256 of its cookie token, so a copy of the
database lets nobody log in or ride a session.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base

HASH_HEX_LEN = 64
PASSWORD_HASH_MAX_LEN = 256
SETTINGS_MAX_LEN = 2048


class ConsoleCredential(Base):
    """A user's console password and the state of failed logins against it."""

    __tablename__ = "console_credentials"

    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_MAX_LEN))
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    failed_logins: Mapped[int] = mapped_column(Integer)
    locked_until_ms: Mapped[int | None] = mapped_column(BigInteger)


class ConsoleSession(Base):
    """One logged-in browser, found by the SHA-256 of its cookie token."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_username", "username"),)

    token_sha256: Mapped[str] = mapped_column(String(HASH_HEX_LEN), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int] = mapped_column(BigInteger)


class UserSettings(Base):
    """One person's personal settings (strongroom.console.preferences), as a validated JSON document."""

    __tablename__ = "user_settings"

    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"), primary_key=True)
    document: Mapped[str] = mapped_column(String(SETTINGS_MAX_LEN))
    updated_ms: Mapped[int] = mapped_column(BigInteger)
