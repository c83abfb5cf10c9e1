"""The per-process cache of keys and KYC standings (scale-out mode): when it may answer from memory."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from custody.access.auth_cache import AuthCache

TTL_MS = 1_000


class Clock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


class Source:
    """The database stand-in: a version per key id, owned by a user; counts reads."""

    def __init__(self) -> None:
        self.version: dict[str, int] = {}
        self.reads = 0

    def load(self, key: str) -> Any:
        self.reads += 1
        return None if key not in self.version else (key, self.version[key])


def owner(value: tuple[str, int]) -> str:
    return "user-" + value[0][-1]


def _cache(clock: Clock, live: list[bool] | None = None, **kwargs: Any) -> AuthCache:
    flag = live if live is not None else [True]
    return AuthCache(TTL_MS, feed_live=lambda: flag[0], clock_ms=clock, **kwargs)


def _get(cache: AuthCache, source: Source, key: str) -> Any:
    return cache.get("key", key, lambda: source.load(key), owner)


def test_auth_cache_second_read_within_ttl_is_served_from_memory() -> None:
    clock, source = Clock(), Source()
    source.version["k1"] = 1
    cache = _cache(clock)
    assert _get(cache, source, "k1") == ("k1", 1)
    assert _get(cache, source, "k1") == ("k1", 1)
    assert source.reads == 1 and cache.hits == 1


def test_auth_cache_entry_past_ttl_is_read_again() -> None:
    clock, source = Clock(), Source()
    source.version["k1"] = 1
    cache = _cache(clock)
    _get(cache, source, "k1")
    source.version["k1"] = 2
    clock.now_ms += TTL_MS - 1
    assert _get(cache, source, "k1") == ("k1", 1)
    clock.now_ms += 1
    assert _get(cache, source, "k1") == ("k1", 2)


def test_auth_cache_invalidate_drops_every_entry_of_the_user_only() -> None:
    clock, source = Clock(), Source()
    source.version.update({"a1": 1, "b1": 1, "x2": 1})  # owners user-1, user-1, user-2
    cache = _cache(clock)
    for key in ("a1", "b1", "x2"):
        _get(cache, source, key)
    assert cache.get("standing", "user-1", lambda: (2, "DE"), lambda _: "user-1") == (2, "DE")
    assert len(cache) == 4
    cache.invalidate("user-1")
    assert len(cache) == 1
    reads = source.reads
    _get(cache, source, "x2")
    assert source.reads == reads
    _get(cache, source, "a1")
    assert source.reads == reads + 1


def test_auth_cache_load_overlapping_an_invalidation_is_not_kept() -> None:
    clock, source = Clock(), Source()
    source.version["k1"] = 1
    cache = _cache(clock)

    def load_then_change() -> Any:
        value = source.load("k1")
        source.version["k1"] = 2  # the change commits after our read...
        cache.invalidate("user-1")  # ...and its announcement arrives before we store
        return value

    assert cache.get("key", "k1", load_then_change, owner) == ("k1", 1)
    assert len(cache) == 0
    assert _get(cache, source, "k1") == ("k1", 2)


def test_auth_cache_without_live_feed_reads_through_and_forgets() -> None:
    clock, source, live = Clock(), Source(), [True]
    source.version["k1"] = 1
    cache = _cache(clock, live)
    _get(cache, source, "k1")
    live[0] = False
    source.version["k1"] = 2
    assert _get(cache, source, "k1") == ("k1", 2)
    assert _get(cache, source, "k1") == ("k1", 2)
    assert source.reads == 3 and len(cache) == 0
    live[0] = True  # back: nothing from before the outage is served
    source.version["k1"] = 3
    assert _get(cache, source, "k1") == ("k1", 3)


def test_auth_cache_unknown_key_is_not_cached() -> None:
    clock, source = Clock(), Source()
    cache = _cache(clock)
    assert _get(cache, source, "k1") is None
    source.version["k1"] = 1  # a key created a moment later works at once
    assert _get(cache, source, "k1") == ("k1", 1)


def test_auth_cache_full_reads_through_without_evicting() -> None:
    clock, source = Clock(), Source()
    source.version.update({"a1": 1, "b1": 1})
    cache = _cache(clock, max_entries=1)
    _get(cache, source, "a1")
    _get(cache, source, "b1")
    _get(cache, source, "b1")
    assert source.reads == 3 and len(cache) == 1


OPS = st.lists(st.one_of(
    st.tuples(st.just("get"), st.sampled_from(["a1", "b1", "c2"])),
    st.tuples(st.just("change"), st.sampled_from(["a1", "b1", "c2"])),
    st.tuples(st.just("tick"), st.integers(0, 2 * TTL_MS)),
    st.tuples(st.just("feed"), st.booleans()),
), max_size=60)


@given(OPS)
def test_auth_cache_never_serves_a_value_older_than_an_announced_change_or_the_ttl(
    ops: list[tuple[str, Any]],
) -> None:
    """Every announced change is seen by the next read; an unannounced one within the TTL."""
    clock, source, live = Clock(), Source(), [True]
    source.version.update({"a1": 0, "b1": 0, "c2": 0})
    cache = _cache(clock, live)
    changes: dict[str, list[tuple[int, bool]]] = {k: [(0, True)] for k in source.version}  # (at, announced)
    for op, arg in ops:
        if op == "get":
            served = _get(cache, source, arg)[1]
            newer = changes[arg][served + 1:]
            if newer:  # stale: only if no newer change was announced and the first is < TTL old
                assert not any(announced for _, announced in newer)
                assert clock.now_ms - newer[0][0] < TTL_MS
        elif op == "change":
            source.version[arg] += 1
            announced = source.version[arg] % 2 == 1
            changes[arg].append((clock.now_ms, announced))
            if announced:
                cache.invalidate(owner((arg, 0)))
        elif op == "tick":
            clock.now_ms += arg
        else:
            live[0] = arg
