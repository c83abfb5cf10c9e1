"""A `policies.replay_cache.ReplayCache` in the database, shared by every API process.

The nonce is the primary key, so two processes racing with the same signed
request cannot both insert it: exactly one wins, the other sees a replay.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.access.models import ReplayNonce

MAX_NONCE_CHARS = 256
PURGE_BATCH = 500


class DbReplayCache:
    """Remember signed requests until their receive window closes."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def remember(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        if len(nonce) > MAX_NONCE_CHARS or expires_at_ms <= now_ms:
            return False
        try:
            with self._sessions.begin() as session:
                # Expired nonces can never be accepted again (their timestamps are
                # outside the window), so deleting them loses nothing.
                session.execute(delete(ReplayNonce).where(ReplayNonce.expires_ms <= now_ms))
                session.add(ReplayNonce(nonce=nonce, expires_ms=expires_at_ms))
        except IntegrityError:
            return False
        return True
