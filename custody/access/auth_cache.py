"""A per-process cache of what a signed request needs from the database: key, user, KYC standing.

Scale-out mode only (docs/scale-out.md, "Signed requests without the
database"); the embedded mode reads the database on every request. An entry
lives at most ``ttl_ms`` (a monotonic clock) and is dropped at once when the
invalidation feed says its user changed (key revoked, user disabled, KYC tier
or jurisdiction changed): the composition root publishes every such change
after its commit and every process's feed evicts the user's entries.

Three rules keep a stale entry from outliving the bound:
- the cache serves and fills only while the feed is live (``feed_live()``
  true); a process whose feed dropped clears everything and reads through;
- a load that overlaps an invalidation is not stored (an epoch counter,
  read before the database read and checked before the insert), so a value
  read just before a change committed cannot be cached after its eviction;
- a missing key (None) is never cached: a key created a moment ago works.

Bounded: at most ``max_entries`` of each kind; a full cache reads through.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

DEFAULT_TTL_MS = 10_000
MAX_TTL_MS = 300_000
DEFAULT_MAX_ENTRIES = 100_000

V = TypeVar("V")


def monotonic_ms() -> int:
    """Return a monotonic clock reading in milliseconds (never the wall clock: it can step)."""
    return time.monotonic_ns() // 1_000_000


class _Table(Generic[V]):
    """One kind of entry: key -> (value, owner username, expiry ms); the caller holds the lock."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[V, str, int]] = {}
        self.by_owner: dict[str, set[str]] = {}

    def put(self, key: str, value: V, owner: str, expires_ms: int) -> None:
        self.entries[key] = (value, owner, expires_ms)
        self.by_owner.setdefault(owner, set()).add(key)

    def drop(self, key: str) -> None:
        found = self.entries.pop(key, None)
        if found is not None:
            keys = self.by_owner.get(found[1])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_owner[found[1]]

    def drop_owner(self, owner: str) -> None:
        for key in self.by_owner.pop(owner, set()):
            self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()
        self.by_owner.clear()


class AuthCache:
    """API keys (by key id) and KYC standings (by username), each owned by a username."""

    def __init__(
        self,
        ttl_ms: int = DEFAULT_TTL_MS,
        *,
        feed_live: Callable[[], bool] = lambda: False,
        clock_ms: Callable[[], int] = monotonic_ms,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        assert 0 < ttl_ms <= MAX_TTL_MS, f"ttl_ms was {ttl_ms}, must be 1..{MAX_TTL_MS}"
        assert max_entries >= 1, f"max_entries was {max_entries}"
        self.ttl_ms = ttl_ms
        self.feed_live = feed_live
        self._clock_ms = clock_ms
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._epoch = 0
        self._pid = os.getpid()
        self._tables: dict[str, _Table[object]] = {"key": _Table(), "standing": _Table()}
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, key: str, load: Callable[[], V | None],
            owner_of: Callable[[V], str]) -> V | None:
        """Return the cached value of ``kind``/``key``, or ``load()`` it (and cache it if allowed)."""
        live = self.feed_live()
        with self._lock:
            self._check_pid()
            table = self._tables[kind]
            now_ms = self._clock_ms()
            found = table.entries.get(key)
            if found is not None:
                if live and found[2] > now_ms:
                    self.hits += 1
                    return found[0]  # type: ignore[return-value]
                table.drop(key)
            if not live:
                for each in self._tables.values():
                    each.clear()
            epoch = self._epoch
            self.misses += 1
        value = load()
        if value is None or not live:
            return value
        with self._lock:
            # An invalidation while we read: what we read may predate the change, do not keep it.
            if self._epoch == epoch and len(table.entries) < self._max_entries:
                table.put(key, value, owner_of(value), now_ms + self.ttl_ms)
        return value

    def invalidate(self, username: str) -> None:
        """Drop every entry of ``username`` (its keys and standing)."""
        with self._lock:
            self._epoch += 1
            for table in self._tables.values():
                table.drop_owner(username)

    def clear(self) -> None:
        """Drop everything (the feed dropped or came back: changes may have been missed)."""
        with self._lock:
            self._epoch += 1
            for table in self._tables.values():
                table.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(t.entries) for t in self._tables.values())

    def _check_pid(self) -> None:
        # A forked child inherits entries its own feed never watched over: start empty.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._epoch += 1
            for table in self._tables.values():
                table.clear()
