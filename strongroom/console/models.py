"""Console tables: passwords, browser sessions, personal settings, alerts and webhooks.

No table holds a secret in clear: the password is an argon2id hash, a session
is stored under the SHA-256 of its cookie token, and a webhook signing secret
is sealed by the keystore (AES-256-GCM bound to its owner), so a copy of the
database lets nobody log in, ride a session or forge a webhook.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base

HASH_HEX_LEN = 64
PASSWORD_HASH_MAX_LEN = 256
SETTINGS_MAX_LEN = 2048
PARAMS_MAX_LEN = 512
MESSAGE_MAX_LEN = 512
DATA_MAX_LEN = 4096
URL_MAX_LEN = 512
SEALED_MAX_LEN = 512


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


class AlertRule(Base):
    """One alert rule of a person (strongroom.console.alerts); deleted rules keep their row."""

    __tablename__ = "alert_rules"
    __table_args__ = (Index("ix_alert_rules_username", "username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[str] = mapped_column(String(PARAMS_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    deleted_ms: Mapped[int | None] = mapped_column(BigInteger)


class AlertNotification(Base):
    """An alert that fired, as the person's console lists it."""

    __tablename__ = "alert_notifications"
    __table_args__ = (Index("ix_alert_notifications_username_id", "username", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    rule_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(MESSAGE_MAX_LEN))
    data: Mapped[str] = mapped_column(String(DATA_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class AlertWebhook(Base):
    """A person's webhook destination; the signing secret only sealed by the keystore, never in clear."""

    __tablename__ = "alert_webhooks"

    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"), primary_key=True)
    url: Mapped[str] = mapped_column(String(URL_MAX_LEN))
    secret_sealed: Mapped[str] = mapped_column(String(SEALED_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One webhook delivery of one alert: pending -> delivered | dead (after the last retry)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_next", "state", "next_attempt_ms"),
                      Index("ix_webhook_deliveries_username", "username"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The receiver deduplicates on it: a retry of the same delivery carries the same key.
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(ForeignKey("access_users.username"))
    body: Mapped[str] = mapped_column(String(DATA_MAX_LEN))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(MESSAGE_MAX_LEN))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
