"""Kill switches on the scale-out path, decided by the engine in stream order (pure, no NATS)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, Command, NewOrder, Rejected
from exchange.engine.orderbook import OrderBook
from exchange.risk.codes import RiskCode
from exchange.stream.controls import (
    CLOSED_REASON,
    VOIDED_REASON,
    ArmDeadman,
    Control,
    EngineControls,
    SetBreaker,
    SetStatus,
    VoidHold,
    encode_control,
)
from exchange.stream.margin import MarginBook
from exchange.stream.wire import CommandEvents, EventBatch

MS = 1_000_000
_enc = msgspec.json.Encoder()


class Engine:
    """One market's book behind its controls, fed command-stream bodies in order."""

    def __init__(self) -> None:
        self.book = OrderBook(Instrument("CTL-PERP", tick_size=1))
        self.gate = EngineControls("CTL-PERP")
        self.seq = 0
        self.margin = MarginBook(100_000)
        self.postings: list[object] = []

    def send(self, cmd: Command | Control) -> list[object]:
        self.seq += 1
        body = encode_control(cmd) if isinstance(cmd, SetStatus | SetBreaker | ArmDeadman | VoidHold) \
            else _enc.encode(cmd)
        events = self.gate.run(self.book, self.seq, body)
        self.postings += self.margin.apply(EventBatch("CTL-PERP", self.seq, self.seq,
                                                      [CommandEvents(self.seq, events)]))
        return events


def _order(oid: str, side: str, price: int, at_ms: int, qty: int = 1, account: str = "a") -> NewOrder:
    return NewOrder(id=oid, account=account, side=side, qty=qty, price=price, ts=at_ms * MS)  # type: ignore[arg-type]


def _codes(events: list[object]) -> list[tuple[str, int]]:
    return [(e.reason, e.code) for e in events if type(e) is Rejected]  # type: ignore[attr-defined]


def test_engine_controls_halted_market_refuses_orders_and_cancels_with_2021() -> None:
    eng = Engine()
    eng.send(_order("rest", "buy", 100, 1))
    eng.send(SetStatus("halted", 0, "incident 42", 2 * MS))
    assert _codes(eng.send(_order("late", "sell", 100, 3))) == [("market_halted", RiskCode.MARKET_HALTED)]
    assert _codes(eng.send(Cancel("rest", "a", 4 * MS))) == [(CLOSED_REASON, RiskCode.MARKET_HALTED)]
    assert "rest" in eng.book.orders  # the book is frozen as it was
    # The refused order's hold is released; the resting order's hold is kept.
    assert [p.pending_id for p in eng.postings] == ["im.late"]  # type: ignore[attr-defined]
    eng.send(SetStatus("open", 0, "", 5 * MS))
    again = eng.send(_order("again", "sell", 100, 6))
    assert [type(e).__name__.lower() for e in again][:2] == ["accepted", "trade"]


def test_engine_controls_cancel_only_lets_cancels_through_and_refuses_new_orders_with_2022() -> None:
    eng = Engine()
    eng.send(_order("rest", "buy", 100, 1))
    eng.send(SetStatus("cancel_only", 0, "", 2 * MS))
    assert _codes(eng.send(_order("new", "buy", 99, 3))) == [("market_cancel_only",
                                                             RiskCode.MARKET_CANCEL_ONLY)]
    assert [type(e).__name__.lower() for e in eng.send(Cancel("rest", "a", 4 * MS))] == ["cancelled"]
    assert eng.book.orders == {}


def test_engine_controls_order_appended_just_before_halt_trades_and_just_after_is_refused() -> None:
    eng = Engine()
    eng.send(_order("ask", "sell", 100, 1, qty=2, account="m"))
    assert any(type(e).__name__.lower() == "trade" for e in eng.send(_order("before", "buy", 100, 2)))
    eng.send(SetStatus("halted", 0, "", 2 * MS))  # same millisecond: the stream order decides
    assert _codes(eng.send(_order("after", "buy", 100, 2))) == [("market_halted", RiskCode.MARKET_HALTED)]


def test_engine_controls_breaker_trips_on_max_move_and_reopens_after_cooldown() -> None:
    eng = Engine()
    eng.send(SetBreaker(500, 60_000, 10_000, 1 * MS))  # 5 % within a minute halts for 10 s
    eng.send(_order("a1", "sell", 100, 2, account="m"))
    eng.send(_order("b1", "buy", 100, 3))
    eng.send(_order("a2", "sell", 106, 4, account="m"))
    trip = eng.send(_order("b2", "buy", 106, 5))  # 100 -> 106: 6 % > 5 %
    assert any(type(e).__name__.lower() == "trade" for e in trip)  # the tripping order completes
    status = eng.gate.status()
    assert status is not None and (status.mode, status.until_ms, status.reason) == (
        "halted", 5 + 10_000, "circuit_breaker")
    assert _codes(eng.send(_order("b3", "buy", 100, 6))) == [("market_halted", RiskCode.MARKET_HALTED)]
    # The cooldown ends by the commands' own clock: an order at or after it trades again.
    assert _codes(eng.send(_order("b4", "buy", 100, 5 + 10_000))) == []
    assert eng.gate.status() is None


def test_engine_controls_dead_mans_switch_cancels_before_the_first_command_past_the_deadline() -> None:
    eng = Engine()
    eng.send(_order("mine", "buy", 100, 1, account="alice"))
    eng.send(_order("other", "buy", 99, 1, account="bob"))
    eng.send(ArmDeadman("alice", 5_000, 1 * MS))
    eng.send(_order("x", "buy", 98, 5_000, account="bob"))
    assert "mine" in eng.book.orders  # 1 + 5000 not reached yet at 5000
    events = eng.send(_order("taker", "sell", 100, 5_001, account="carol"))
    # alice's order is cancelled before carol's order runs: it cannot trade past the deadline.
    assert (type(events[0]).__name__.lower(), getattr(events[0], "id", None)) == ("cancelled", "mine")
    assert "mine" not in eng.book.orders and "other" in eng.book.orders  # nothing crossed at 100
    # Re-arming moves the deadline; 0 disarms.
    eng.send(_order("mine2", "buy", 90, 6_000, account="alice"))
    eng.send(ArmDeadman("alice", 5_000, 6_000 * MS))
    eng.send(ArmDeadman("alice", 0, 7_000 * MS))
    eng.send(_order("later", "buy", 80, 20_000, account="bob"))
    assert "mine2" in eng.book.orders


def test_engine_controls_void_tombstone_before_the_order_refuses_it_forever() -> None:
    eng = Engine()
    assert _codes(eng.send(VoidHold("stuck", 1 * MS))) == [(VOIDED_REASON, 3002)]
    assert _codes(eng.send(_order("stuck", "buy", 100, 2))) == [(VOIDED_REASON, 3002)]
    assert eng.book.orders == {}
    # Both releases are tolerant voids of the same hold: the first wins, the second finds nothing.
    assert [p.pending_id for p in eng.postings] == ["im.stuck", "im.stuck"]  # type: ignore[attr-defined]


def test_engine_controls_void_tombstone_after_the_order_rests_changes_nothing() -> None:
    eng = Engine()
    eng.send(_order("slow", "buy", 100, 1))
    assert eng.send(VoidHold("slow", 2 * MS)) == []
    assert "slow" in eng.book.orders and eng.postings == []


_cmds = st.one_of(
    st.builds(lambda i, s, p, t: _order(f"o{i}", s, p, t, account=f"u{i % 3}"),
              st.integers(0, 12), st.sampled_from(["buy", "sell"]), st.integers(95, 105),
              st.integers(0, 50)),
    st.builds(lambda i, t: Cancel(f"o{i}", None, t * MS), st.integers(0, 12), st.integers(0, 50)),
    st.builds(lambda m, t: SetStatus(m, 0, "", t * MS), st.sampled_from(["open", "halted",
                                                                          "cancel_only"]),
              st.integers(0, 50)),
    st.builds(lambda t: SetBreaker(300, 20, 10, t * MS), st.integers(0, 50)),
    st.builds(lambda a, t: ArmDeadman(f"u{a}", 1_000, t * MS), st.integers(0, 2), st.integers(0, 50)),
    st.builds(lambda i, t: VoidHold(f"o{i}", t * MS), st.integers(0, 12), st.integers(0, 50)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_cmds, max_size=40), st.integers(1, 39))
def test_engine_controls_snapshot_midway_replays_to_same_events_and_state(
        flow: list[Command | Control], cut: int) -> None:
    whole = Engine()
    expected = [msgspec.to_builtins(whole.send(c)) for c in flow]
    # A standby: the first `cut` commands, a snapshot round trip, then the rest.
    first = Engine()
    got = [msgspec.to_builtins(first.send(c)) for c in flow[:cut]]
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(first.gate.snapshot()),
                                  type=type(first.gate.snapshot()))
    resumed = Engine()
    resumed.book = OrderBook.from_state(first.book.state())
    resumed.gate = EngineControls.restore("CTL-PERP", snap)
    resumed.seq, resumed.margin = first.seq, first.margin
    got += [msgspec.to_builtins(resumed.send(c)) for c in flow[cut:]]
    assert got == expected
    assert resumed.book.state_hash() == whole.book.state_hash()
    assert resumed.gate.snapshot() == whole.gate.snapshot()
