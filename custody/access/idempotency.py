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


# A claimed record whose request never finished (the process died) may be taken over after this.
CLAIM_STALE_MS = 60_000
IN_PROGRESS = 0


class Idempotency:
    """Claim, complete and replay request results by (username, key).

    The record is claimed (inserted, unique per user and key) *before* the work
    runs, so two concurrent requests with one key cannot both do it: the second
    sees the claim and is told to retry. The response is stored when the work
    ends; a refusal or a crash releases the claim so a retry runs again (the
    services are idempotent by the ids they derive from the key).
    """

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def claim(self, username: str, key: str, fingerprint: str) -> StoredResponse | None:
        """Claim ``key`` for this request; return the stored response if it already completed.

        Raise ``idempotency_key_reused`` for another request under the same key and
        ``idempotency_key_in_progress`` while the first request is still running.
        """
        now_ms = self._clock()
        try:
            with self._sessions.begin() as session:
                session.add(IdempotencyRecord(
                    username=username, idempotency_key=key, request_sha256=fingerprint,
                    status=IN_PROGRESS, body="", created_ms=now_ms))
            return None
        except IntegrityError:
            pass
        with self._sessions.begin() as session:
            row = session.scalar(select(IdempotencyRecord).where(
                IdempotencyRecord.username == username, IdempotencyRecord.idempotency_key == key,
            ).with_for_update())
            if row is None:
                # Released between our insert and this read: the caller retries.
                raise _in_progress(key)
            if row.request_sha256 != fingerprint:
                raise AccessError(AccessCode.IDEMPOTENCY_KEY_REUSED,
                                  f"Idempotency-Key {key} was used for a different request")
            if row.status != IN_PROGRESS:
                return StoredResponse(row.status, row.body)
            if now_ms - row.created_ms < CLAIM_STALE_MS:
                raise _in_progress(key)
            # The first request's process died mid-way: take the claim over and run it again.
            row.created_ms = now_ms
            return None

    def lookup(self, username: str, key: str, fingerprint: str) -> StoredResponse | None:
        """Return the stored response for a retry; refuse a key reused for another request."""
        with self._sessions() as session:
            row = session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.username == username, IdempotencyRecord.idempotency_key == key
                )
            )
            if row is None or row.status == IN_PROGRESS:
                return None
            if row.request_sha256 != fingerprint:
                raise AccessError(
                    AccessCode.IDEMPOTENCY_KEY_REUSED,
                    f"Idempotency-Key {key} was used for a different request",
                )
            return StoredResponse(row.status, row.body)

    def complete(self, username: str, key: str, status: int, body: str) -> None:
        """Store the response of a claimed request."""
        assert status != IN_PROGRESS
        with self._sessions.begin() as session:
            row = session.scalar(select(IdempotencyRecord).where(
                IdempotencyRecord.username == username, IdempotencyRecord.idempotency_key == key))
            if row is not None and row.status == IN_PROGRESS:
                row.status, row.body = status, body

    def release(self, username: str, key: str) -> None:
        """Drop an unfinished claim so a retry runs the request again."""
        with self._sessions.begin() as session:
            row = session.scalar(select(IdempotencyRecord).where(
                IdempotencyRecord.username == username, IdempotencyRecord.idempotency_key == key))
            if row is not None and row.status == IN_PROGRESS:
                session.delete(row)


def _in_progress(key: str) -> AccessError:
    return AccessError(AccessCode.IDEMPOTENCY_KEY_IN_PROGRESS,
                       f"a request with Idempotency-Key {key} is still running; retry shortly")
