"""Kill switches in the venue: market modes, the max-move breaker, the dead man's switch, replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.controls import ControlError, MarketClosed
from exchange.engine.journal import FsyncPolicy
from exchange.engine.messages import Amend, NewOrder
from exchange.instruments import load_instruments
from exchange.recovery import DurableVenue
from exchange.risk.clearing import isolated_account
from exchange.risk.codes import RiskCode
from exchange.venue import Venue
from tests.exchange.helpers import BTC, NOW, USDC, move, venue

SYM = "BTC-PERP"
NS = 1_000_000


def _order(oid: str, account: str, side: str, price: int, qty: int = 1, ts_ms: int = NOW) -> NewOrder:
    return NewOrder(id=oid, account=account, side=side, qty=qty, price=price, ts=ts_ms * NS)  # type: ignore[arg-type]


def _funded() -> Venue:
    v = venue(accounts={"alice": 1_000_000 * USDC, "bob": 1_000_000 * USDC, "carol": 1_000_000 * USDC})
    v.drain()
    return v


def _live(v: Venue, account: str) -> list[str]:
    book = v.books[SYM]
    return sorted(o.id for o in book.orders.values() if o.account == account)


def test_halted_market_refuses_orders_amends_and_cancels_then_reopens() -> None:
    v = _funded()
    assert v.place(SYM, _order("a1", "alice", "buy", BTC - 1_000 * USDC)).code == RiskCode.OK
    v.set_market_status(SYM, "halted", reason="incident 7")
    refused = v.place(SYM, _order("a2", "alice", "buy", BTC - 1_000 * USDC))
    assert refused.code == RiskCode.MARKET_HALTED and "incident 7" in refused.message
    assert v.amend(SYM, Amend("a1", 2, None, "alice")).code == RiskCode.MARKET_HALTED
    with pytest.raises(MarketClosed) as closed:
        v.cancel(SYM, "a1", "alice")
    assert closed.value.code == RiskCode.MARKET_HALTED
    with pytest.raises(MarketClosed):
        v.cancel_all(SYM, "alice")
    assert _live(v, "alice") == ["a1"]
    v.set_market_status(SYM, "open")
    assert v.place(SYM, _order("a3", "alice", "buy", BTC - 1_000 * USDC)).code == RiskCode.OK


def test_cancel_only_market_accepts_cancels_and_refuses_new_risk() -> None:
    v = _funded()
    v.place(SYM, _order("a1", "alice", "buy", BTC - 1_000 * USDC))
    v.set_market_status(SYM, "cancel_only")
    assert v.place(SYM, _order("a2", "alice", "buy", BTC - 2_000 * USDC)).code == RiskCode.MARKET_CANCEL_ONLY
    assert v.amend(SYM, Amend("a1", 2, None, "alice")).code == RiskCode.MARKET_CANCEL_ONLY
    v.cancel(SYM, "a1", "alice")
    assert _live(v, "alice") == []
    # Other markets are untouched.
    assert v.place("ETH-PERP", _order("e1", "alice", "buy", 2_900_000_000)).code == RiskCode.OK


def test_market_status_with_unknown_mode_changes_nothing() -> None:
    v = _funded()
    before = v.state_hash()
    with pytest.raises(ControlError):
        v.set_market_status(SYM, "paused")
    v.drain()
    assert v.state_hash() == before


def test_circuit_breaker_trips_on_a_walked_price_and_lifts_after_cooldown() -> None:
    v = _funded()
    v.set_breaker(SYM, max_move_bps=100, window_ms=60_000, cooldown_ms=30_000)  # 1 % in a minute
    price, t = BTC, NOW
    tripped_at = None
    # Colluders walk the price up 0.4 % per trade, each inside the band.
    for i in range(6):
        price = price * 1004 // 1000 // 1_000_000 * 1_000_000
        t += 1_000
        v.now_ms = t
        v.place(SYM, _order(f"s{i}", "bob", "sell", price, ts_ms=t))
        result = v.place(SYM, _order(f"b{i}", "carol", "buy", price, ts_ms=t))
        if result.code == RiskCode.MARKET_HALTED:
            tripped_at = i
            break
        assert result.code == RiskCode.OK, result.message
        if v.controls.mode(SYM, t) == "halted":
            tripped_at = i
            break
    assert tripped_at is not None and v.controls.trips == 1
    halted = v.place(SYM, _order("late", "carol", "buy", price, ts_ms=t + 1_000))
    assert halted.code == RiskCode.MARKET_HALTED and "circuit_breaker" in halted.message
    after = t + 30_000
    move(v, "BTC", BTC, after)
    v.drain()
    assert v.place(SYM, _order("again", "carol", "buy", price - 100 * USDC, ts_ms=after)).code == RiskCode.OK


def test_circuit_breaker_does_not_trip_inside_its_limit() -> None:
    v = _funded()
    v.set_breaker(SYM, max_move_bps=500, window_ms=60_000, cooldown_ms=30_000)
    for i in range(3):
        t = NOW + i * 1_000
        v.place(SYM, _order(f"s{i}", "bob", "sell", BTC + i * 10 * USDC, ts_ms=t))
        assert v.place(SYM, _order(f"b{i}", "carol", "buy", BTC + i * 10 * USDC, ts_ms=t)).code == RiskCode.OK
    assert v.controls.trips == 0 and v.controls.mode(SYM, NOW + 3_000) == "open"


def test_deadman_cancels_all_orders_of_the_account_after_timeout_unless_rearmed() -> None:
    v = _funded()
    v.place(SYM, _order("a1", "alice", "buy", BTC - 1_000 * USDC))
    iso = isolated_account("alice", "ETH-PERP")
    v.deposit(iso, 10_000 * USDC)
    v.place("ETH-PERP", _order("a2", iso, "buy", 2_500_000_000))
    v.place(SYM, _order("b1", "bob", "buy", BTC - 1_000 * USDC))
    assert v.arm_deadman("alice", 10_000, NOW) == NOW + 10_000
    assert not v.due(NOW + 9_999)
    assert v.arm_deadman("alice", 10_000, NOW + 9_000) == NOW + 19_000  # re-armed: the deadline moves
    assert not v.due(NOW + 18_999)
    assert v.due(NOW + 19_000)
    v.advance(NOW + 19_000)
    assert _live(v, "alice") == []
    assert not [o for o in v.books["ETH-PERP"].orders.values() if o.account == iso]
    assert _live(v, "bob") == ["b1"]
    assert not v.controls.deadman


def test_deadman_disarmed_with_zero_cancels_nothing() -> None:
    v = _funded()
    v.place(SYM, _order("a1", "alice", "buy", BTC - 1_000 * USDC))
    v.arm_deadman("alice", 5_000, NOW)
    v.arm_deadman("alice", 0, NOW + 1_000)
    v.advance(NOW + 60_000)
    assert _live(v, "alice") == ["a1"]


@pytest.mark.parametrize("timeout_ms", [1, 999, 86_400_001, -5])
def test_deadman_with_timeout_out_of_range_is_refused(timeout_ms: int) -> None:
    v = _funded()
    with pytest.raises(ControlError):
        v.arm_deadman("alice", timeout_ms, NOW)
    assert not v.controls.deadman


def test_kill_switches_survive_restart_and_replay_to_the_same_state_hash(tmp_path: Path) -> None:
    config = load_instruments()
    durable, _ = DurableVenue.open(tmp_path, config, policy=FsyncPolicy.NEVER, snapshot_every=3)
    v = durable.venue
    v.deposit("alice", 1_000_000 * USDC)
    v.deposit("bob", 1_000_000 * USDC)
    v.set_mark(SYM, BTC, BTC)
    v.place(SYM, _order("a1", "alice", "buy", BTC - 1_000 * USDC))
    v.drain()
    durable.commit()
    v.set_breaker(SYM, 200, 60_000, 10_000)
    v.set_market_status("ETH-PERP", "cancel_only", reason="maintenance")
    v.arm_deadman("bob", 30_000, NOW)
    v.drain()
    durable.commit()
    durable.snapshot()
    v.set_market_status(SYM, "halted", until_ms=NOW + 5_000, reason="test")
    v.drain()
    durable.commit()
    expected = v.state_hash()
    durable.close()
    again, _ = DurableVenue.open(tmp_path, config, policy=FsyncPolicy.NEVER)
    assert again.venue.state_hash() == expected
    assert again.venue.controls.mode(SYM, NOW) == "halted"
    assert again.venue.controls.mode("ETH-PERP", NOW) == "cancel_only"
    assert again.venue.controls.deadman == {"bob": NOW + 30_000}
    assert again.venue.controls.breakers[SYM].max_move_bps == 200
    again.close()


def test_venue_without_kill_switches_keeps_its_old_state_hash() -> None:
    v = _funded()
    import hashlib

    import msgspec

    assert v.state_hash() == hashlib.sha256(msgspec.msgpack.encode(v.state())).hexdigest()


class _Log:
    def __init__(self) -> None:
        self.commands: list[object] = []

    def record(self, cmd: object) -> None:
        self.commands.append(cmd)


_STEPS = st.lists(st.tuples(
    st.sampled_from(["order", "cancel_all", "halt", "cancel_only", "open", "breaker", "deadman", "advance"]),
    st.sampled_from(["alice", "bob", "carol"]),
    st.integers(-30, 30),  # price offset in 0.1 % steps
    st.integers(0, 20_000),  # ms to move the clock
), min_size=1, max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
def test_kill_switch_commands_replay_to_the_same_state_hash(steps: list[tuple[str, str, int, int]]) -> None:
    v = _funded()
    log = _Log()
    v.journal = log  # type: ignore[assignment]
    t = NOW
    for i, (kind, who, offset, dt) in enumerate(steps):
        t += dt
        price = (BTC + BTC * offset // 1000) // 1_000_000 * 1_000_000
        try:
            if kind == "order":
                v.place(SYM, _order(f"o{i}", who, "buy" if offset % 2 else "sell", price, ts_ms=t))
            elif kind == "cancel_all":
                v.cancel_all(SYM, who)
            elif kind in ("halt", "cancel_only", "open"):
                v.set_market_status(SYM, "halted" if kind == "halt" else kind,
                                    until_ms=t + dt if kind == "halt" and offset > 0 else 0)
            elif kind == "breaker":
                v.set_breaker(SYM, abs(offset) * 10, 60_000, 5_000)
            elif kind == "deadman":
                v.arm_deadman(who, 1_000 + dt, t)
            else:
                v.advance(t)
        except MarketClosed:
            pass
        v.drain()
    replayed = _funded()
    for cmd in log.commands:
        replayed.execute(cmd)  # type: ignore[arg-type]
    assert replayed.state_hash() == v.state_hash()
    assert replayed.controls.state() == v.controls.state()
