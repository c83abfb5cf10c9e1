"""Remember signed requests long enough to reject replays.

A request is only accepted inside its receive window, so its signature needs
remembering only until the window closes. The protocol lets a DB-backed or
shared cache replace the in-memory one when the API runs in several processes.
"""

from __future__ import annotations

import heapq
from typing import Protocol

DEFAULT_MAX_ENTRIES = 100_000


class ReplayCache(Protocol):
    def remember(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        """Record `nonce` until `expires_at_ms`; return False if it is a replay.

        A nonce always arrives with the same expiry (the signature it is made
        of covers the timestamp the expiry is computed from). Return False
        also when freshness cannot be proven, e.g. a full cache.
        """
        ...


class InMemoryReplayCache:
    """A bounded in-process `ReplayCache`; time comes in with every call.

    When full, the entry closest to expiry is dropped and `floor_ms` rises to
    its expiry; from then on nonces that would expire at or before the floor
    are refused, since the cache can no longer prove they are fresh. Under
    overload the effective receive window shrinks; replays never get through.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        assert max_entries >= 1, f"max_entries was {max_entries}"
        self._max_entries = max_entries
        self._expiry_ms: dict[str, int] = {}
        self._by_expiry: list[tuple[int, str]] = []
        self.floor_ms = 0

    def __len__(self) -> int:
        return len(self._expiry_ms)

    def remember(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        self._purge(now_ms)
        if nonce in self._expiry_ms or expires_at_ms <= max(self.floor_ms, now_ms):
            return False
        if len(self._expiry_ms) >= self._max_entries:
            # Evicting would raise the floor to the oldest expiry; a nonce that
            # expires no later than that would be refused anyway, so refuse it
            # before evicting and keep what we remember.
            if expires_at_ms <= self._by_expiry[0][0]:
                return False
            evicted_ms, evicted = heapq.heappop(self._by_expiry)
            del self._expiry_ms[evicted]
            self.floor_ms = max(self.floor_ms, evicted_ms)
        self._expiry_ms[nonce] = expires_at_ms
        heapq.heappush(self._by_expiry, (expires_at_ms, nonce))
        assert len(self._expiry_ms) == len(self._by_expiry) <= self._max_entries
        return True

    def _purge(self, now_ms: int) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now_ms:
            _, nonce = heapq.heappop(self._by_expiry)
            del self._expiry_ms[nonce]
