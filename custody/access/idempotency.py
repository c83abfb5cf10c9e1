"""Stored results of state-changing requests, so a retry returns the original result.

A record is keyed by (user, Idempotency-Key) and remembers a fingerprint of
the request (method, path, body hash): the same key with a different request
is refused rather than silently answered with an unrelated result.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.access.errors import AccessCode, AccessError
from custody.access.models import IdempotencyRecord

IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: str


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """Return the SHA-256 hex that identifies a request for idempotency purposes."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), query.encode(), hashlib.sha256(body).digest()):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


def check_key(key: str) -> str:
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise AccessError(
            AccessCode.IDEMPOTENCY_KEY_INVALID,
            f"Idempotency-Key was {key[:140]!r}, must match {IDEMPOTENCY_KEY_PATTERN.pattern}",
        )
    return key


class Idempotency:
    """Look up and store responses by (username, key)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def lookup(self, username: str, key: str, fingerprint: str) -> StoredResponse | None:
        """Return the stored response for a retry; refuse a key reused for another request."""
        with self._sessions() as session:
            row = session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.username == username, IdempotencyRecord.idempotency_key == key
                )
            )
            if row is None:
                return None
            if row.request_sha256 != fingerprint:
                raise AccessError(
                    AccessCode.IDEMPOTENCY_KEY_REUSED,
                    f"Idempotency-Key {key} was used for a different request",
                )
            return StoredResponse(row.status, row.body)

    def store(self, username: str, key: str, fingerprint: str, status: int, body: str) -> None:
        """Remember a response; a concurrent duplicate keeps the first one stored."""
        try:
            with self._sessions.begin() as session:
                session.add(
                    IdempotencyRecord(
                        username=username,
                        idempotency_key=key,
                        request_sha256=fingerprint,
                        status=status,
                        body=body,
                        created_ms=self._clock(),
                    )
                )
        except IntegrityError:
            pass
