from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.replay_cache import InMemoryReplayCache


def test_replay_cache_second_sighting_is_replay() -> None:
    cache = InMemoryReplayCache()
    assert cache.remember("n1", expires_at_ms=100, now_ms=0)
    assert not cache.remember("n1", expires_at_ms=100, now_ms=50)


def test_replay_cache_entry_forgotten_after_expiry() -> None:
    cache = InMemoryReplayCache()
    cache.remember("n1", expires_at_ms=100, now_ms=0)
    cache.remember("n2", expires_at_ms=300, now_ms=200)
    assert len(cache) == 1


def test_replay_cache_already_expired_nonce_refused() -> None:
    assert not InMemoryReplayCache().remember("n1", expires_at_ms=10, now_ms=10)


def test_replay_cache_full_raises_floor_instead_of_forgetting() -> None:
    cache = InMemoryReplayCache(max_entries=2)
    assert cache.remember("a", 100, 0)
    assert cache.remember("b", 200, 0)
    assert cache.remember("c", 300, 0)  # Evicts "a"; nothing expiring by 100 is accepted now.
    assert cache.floor_ms == 100
    assert not cache.remember("a", 100, 0)  # The evicted nonce cannot come back.
    assert len(cache) == 2


WINDOW_MS = 50


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(-WINDOW_MS, WINDOW_MS), st.integers(0, 20)),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 5),
)
def test_replay_cache_never_accepts_a_signed_request_twice(
    events: list[tuple[str, int, int]], capacity: int
) -> None:
    # Model the API: a request signed at `timestamp` arrives within the window;
    # its nonce names the timestamp, and it is remembered until the window ends.
    cache = InMemoryReplayCache(max_entries=capacity)
    accepted: set[str] = set()
    now_ms = 1_000
    for name, skew_ms, advance_ms in events:
        now_ms += advance_ms
        timestamp = now_ms + skew_ms
        nonce = f"{name}:{timestamp}"
        if cache.remember(nonce, timestamp + WINDOW_MS + 1, now_ms):
            assert nonce not in accepted, f"{nonce} accepted twice"
            accepted.add(nonce)
        assert len(cache) <= capacity
