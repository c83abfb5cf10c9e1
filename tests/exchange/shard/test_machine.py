"""The clearing shard machine: a whole venue applied in stream order, identically on every replica."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    Deposit,
    Place,
    Quote,
    SeedInsurance,
    SetMarketStatus,
    Tick,
    Withdraw,
)
from exchange.engine.messages import Amend, NewOrder, Trade
from exchange.instruments import load_instruments
from exchange.risk.codes import RiskCode
from exchange.risk.entitlements import TradingLimits
from exchange.stream.shard.machine import (
    BAD_COMMAND,
    DEPOSIT_VOIDED,
    ShardMachine,
    SnapshotCorrupt,
    StreamGap,
)
from exchange.stream.shard.wire import (
    FundedDeposit,
    ShardCommand,
    ShardOp,
    VoidDeposit,
    encode_command,
    msg_id_of,
)
from tests.exchange.helpers import BTC, NOW, SOURCES, USDC

CONFIG = load_instruments()
REF = "cdep.MAIN." + "ab" * 16
PRICE = BTC // 1000 * 1000  # a multiple of the BTC-PERP tick


def cmd(op: ShardOp, ts_ms: int = NOW, user: str | None = None,
        limits: TradingLimits | None = None) -> bytes:
    return encode_command(ShardCommand(op, ts_ms, user, limits))


def opening() -> list[bytes]:
    """Insurance, two funded traders and a fresh BTC index."""
    out = [cmd(SeedInsurance(1_000 * USDC)), cmd(Deposit("alice", 10_000 * USDC)),
           cmd(Deposit("bob", 10_000 * USDC))]
    out += [cmd(Quote("BTC", s, BTC, NOW)) for s in SOURCES]
    out += [cmd(Quote("ETH", s, 3_000 * USDC, NOW)) for s in SOURCES]
    out += [cmd(Tick("BTC", NOW)), cmd(Tick("ETH", NOW))]
    return out


def order(oid: str, account: str, side: str, qty: int, price: int = PRICE, ts_ms: int = NOW) -> bytes:
    return cmd(Place("BTC-PERP", NewOrder(oid, account, side, qty, price=price,  # type: ignore[arg-type]
                                          ts=ts_ms * 1_000_000)), ts_ms)


def run(machine: ShardMachine, bodies: list[bytes]) -> list:
    return [machine.apply(machine.seq + 1, b) for b in bodies]


def test_shard_machine_trade_produces_events_postings_and_replays_to_same_hash() -> None:
    bodies = [*opening(), order("a1", "alice", "buy", 2), order("b1", "bob", "sell", 2)]
    leader, replica = ShardMachine(CONFIG, "MAIN"), ShardMachine(CONFIG, "MAIN")
    results = run(leader, bodies)
    assert [r.code for r in results] == [0] * len(bodies)
    trades = [e for _, e in results[-1].events if type(e) is Trade]
    assert len(trades) == 1 and trades[0].qty == 2
    assert results[-1].postings, "a trade moves fees and margin"
    assert run(replica, bodies) == results
    assert replica.state_hash() == leader.state_hash()
    ids = [p[0] for r in results for p in r.postings]
    assert len(ids) == len(set(ids)) and all(i.startswith("s.MAIN.") for i in ids)


def test_shard_machine_order_beyond_free_margin_is_refused_and_changes_nothing() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, opening())
    alice = m.venue.clearing.accounts["alice"]
    before = (alice.cash, alice.hold, dict(m.venue.clearing.orders), m.venue.books["BTC-PERP"].state())
    r = m.apply(m.seq + 1, order("big", "alice", "buy", 10_000_000))
    assert r.code == RiskCode.INSUFFICIENT_MARGIN and not r.postings and not r.events
    assert (alice.cash, alice.hold, dict(m.venue.clearing.orders),
            m.venue.books["BTC-PERP"].state()) == before


def test_shard_machine_two_gateways_orders_decided_in_stream_order_never_over_reserve() -> None:
    """Two orders that each fit the free margin but not together: the second in the stream is refused."""
    m = ShardMachine(CONFIG, "MAIN")
    run(m, [*opening()[:1], cmd(Deposit("carol", 1000 * USDC)), *opening()[3:]])
    first = m.apply(m.seq + 1, order("c1", "carol", "buy", 1, price=PRICE))
    assert first.code == 0
    free = m.venue.clearing.available(m.venue.clearing.accounts["carol"])
    qty = 1
    while True:  # the largest order that still fits what is left
        probe = ShardMachine.restore(CONFIG, "MAIN", m.snapshot())
        if probe.apply(probe.seq + 1, order("p", "carol", "buy", qty * 2, price=PRICE)).code:
            break
        qty *= 2
    a = m.apply(m.seq + 1, order("c2", "carol", "buy", qty, price=PRICE))
    b = m.apply(m.seq + 1, order("c3", "carol", "buy", qty, price=PRICE))
    assert a.code == 0 and b.code == RiskCode.INSUFFICIENT_MARGIN and free > 0


def test_shard_machine_kyc_notional_cap_checked_in_stream_order_with_the_limits_it_carries() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, opening())
    cap = TradingLimits(basis="KYC tier 1", max_notional=150 * USDC)  # 2 contracts: 120 USDC
    ok = m.apply(m.seq + 1, cmd(Place("BTC-PERP", NewOrder("alice:1", "alice", "buy", 2, price=PRICE)),
                                user="alice", limits=cap))
    over = m.apply(m.seq + 1, cmd(Place("BTC-PERP", NewOrder("alice:2", "alice", "buy", 2, price=PRICE)),
                                  user="alice", limits=cap))
    assert ok.code == 0
    assert over.code == RiskCode.NOTIONAL_CAP_EXCEEDED and "open orders count" in over.message
    assert m.apply(m.seq + 1, cmd(AmendOrder("BTC-PERP", Amend("alice:1", qty=5)), user="alice",
                                  limits=cap)).code == RiskCode.NOTIONAL_CAP_EXCEEDED
    other = m.apply(m.seq + 1, cmd(Place("BTC-PERP", NewOrder("x", "bob", "buy", 1, price=PRICE)),
                                   user="alice", limits=cap))
    assert other.code == RiskCode.TRADING_NOT_PERMITTED


def test_shard_machine_undecodable_or_invalid_command_is_refused_and_the_stream_continues() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, opening())
    before = m.venue.state_hash()
    assert m.apply(m.seq + 1, b"{not json").code == BAD_COMMAND
    assert m.apply(m.seq + 1, b'{"cmd":{"op":"nope"},"ts_ms":1}').code == BAD_COMMAND
    assert m.apply(m.seq + 1, cmd(CancelOrder("NO-SUCH", "x", "alice"))).code == BAD_COMMAND
    assert m.apply(m.seq + 1, cmd(Withdraw("nobody", 5))).code == RiskCode.UNKNOWN_ACCOUNT
    assert m.apply(m.seq + 1, order("ok", "alice", "buy", 1)).code == 0
    assert m.venue.state_hash() != before


def test_shard_machine_out_of_sequence_command_raises_stream_gap() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    with pytest.raises(StreamGap):
        m.apply(2, cmd(SeedInsurance(5)))


def test_shard_machine_funded_deposit_posts_the_reservation_once() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    r = m.apply(1, cmd(FundedDeposit("alice", 500 * USDC, REF)))
    assert r.code == 0
    [(_tid, kind, debit, credit, amount, pending)] = r.postings
    assert (kind, debit, credit, amount, pending) == ("post", "a:alice", "m:alice", 500 * USDC, REF)
    again = m.apply(2, cmd(FundedDeposit("alice", 500 * USDC, REF)))
    assert again.code == 0 and not again.postings
    assert m.venue.clearing.accounts["alice"].cash == 500 * USDC


def test_shard_machine_void_deposit_before_its_command_refuses_the_late_deposit() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    void = m.apply(1, cmd(VoidDeposit(REF)))
    assert void.code == 0 and [p[1] for p in void.postings] == ["void"] and void.postings[0][5] == REF
    late = m.apply(2, cmd(FundedDeposit("alice", 500 * USDC, REF)))
    assert late.code == DEPOSIT_VOIDED and not late.postings
    assert "alice" not in m.venue.clearing.accounts


def test_shard_machine_void_deposit_after_its_command_changes_nothing() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    m.apply(1, cmd(FundedDeposit("alice", 500 * USDC, REF)))
    r = m.apply(2, cmd(VoidDeposit(REF)))
    assert r.code == 0 and not r.postings
    assert m.venue.clearing.accounts["alice"].cash == 500 * USDC


def test_shard_machine_bad_deposit_reference_is_refused() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    assert m.apply(1, cmd(FundedDeposit("alice", 5, "x.1"))).code == BAD_COMMAND
    assert m.apply(2, cmd(FundedDeposit("alice", -5, REF))).code == BAD_COMMAND
    assert m.apply(3, cmd(VoidDeposit("../etc"))).code == BAD_COMMAND


def test_shard_machine_halt_is_decided_in_stream_order() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, opening())
    assert m.apply(m.seq + 1, order("before", "alice", "buy", 1)).code == 0
    m.apply(m.seq + 1, cmd(SetMarketStatus("BTC-PERP", "halted", reason="incident")))
    assert m.apply(m.seq + 1, order("after", "alice", "buy", 1)).code == RiskCode.MARKET_HALTED
    assert m.apply(m.seq + 1, cmd(CancelOrder("BTC-PERP", "before", "alice"))).code == RiskCode.MARKET_HALTED


def test_shard_machine_stale_index_refuses_new_risk_at_the_stream_clock() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, opening())
    later = NOW + 3_600_000  # an hour without quotes
    r = m.apply(m.seq + 1, order("late", "alice", "buy", 1, ts_ms=later))
    assert r.code == RiskCode.INDEX_STALE


def test_shard_machine_snapshot_restores_equal_state_and_refuses_tampering() -> None:
    m = ShardMachine(CONFIG, "MAIN")
    run(m, [*opening(), order("a1", "alice", "buy", 2), cmd(FundedDeposit("bob", 5, REF))])
    snap = m.snapshot()
    back = ShardMachine.restore(CONFIG, "MAIN", snap)
    assert back.state_hash() == m.state_hash() and back.seq == m.seq
    with pytest.raises(SnapshotCorrupt):
        ShardMachine.restore(CONFIG, "OTHER", snap)
    with pytest.raises(SnapshotCorrupt):
        ShardMachine.restore(CONFIG, "MAIN", snap[:-7] + b"\x00" * 7)
    forged_state = msgspec.msgpack.decode(snap)
    forged_state["venue"]["state_hash"] = "0" * 64
    with pytest.raises(SnapshotCorrupt):
        ShardMachine.restore(CONFIG, "MAIN", msgspec.msgpack.encode(forged_state))


def test_shard_command_msg_ids_make_retries_idempotent() -> None:
    place = Place("BTC-PERP", NewOrder("u1:c1", "alice", "buy", 1, price=PRICE))
    assert msg_id_of(place, "n") == "u1:c1"
    assert msg_id_of(CancelOrder("BTC-PERP", "u1:c1", "alice"), "n") == "cx.u1:c1"
    assert msg_id_of(FundedDeposit("alice", 5, REF), "n") == REF
    assert msg_id_of(VoidDeposit(REF), "n") == "void." + REF
    assert msg_id_of(Withdraw("alice", 5), "abc") == "r.abc"


OPS = st.one_of(
    st.tuples(st.just("order"), st.sampled_from(["alice", "bob"]), st.sampled_from(["buy", "sell"]),
              st.integers(1, 5), st.integers(-3, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("quote"), st.integers(-5, 5), st.integers(0, 120_000)),
    st.tuples(st.just("withdraw"), st.sampled_from(["alice", "bob"]), st.integers(1, 20_000 * USDC)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(OPS, max_size=40), st.integers(0, 45))
def test_shard_machine_any_flow_snapshot_midway_replays_to_same_results_and_hash(ops, cut) -> None:
    bodies = opening()
    ts = NOW
    for n, op in enumerate(ops):
        if op[0] == "order":
            _, who, side, qty, ticks = op
            bodies.append(order(f"o{n}", who, side, qty, price=PRICE + ticks * 100_000, ts_ms=ts))
        elif op[0] == "cancel":
            bodies.append(cmd(CancelOrder("BTC-PERP", f"o{op[1]}", None), ts))
        elif op[0] == "quote":
            ts += op[2] // 10
            px = BTC + op[1] * BTC // 100
            bodies += [cmd(Quote("BTC", s, px, ts), ts) for s in SOURCES] + [cmd(Tick("BTC", ts), ts)]
        else:
            bodies.append(cmd(Withdraw(op[1], op[2]), ts))
    whole = ShardMachine(CONFIG, "MAIN")
    expected = run(whole, bodies)
    cut = min(cut, len(bodies))
    first = ShardMachine(CONFIG, "MAIN")
    head = run(first, bodies[:cut])
    resumed = ShardMachine.restore(CONFIG, "MAIN", first.snapshot())
    tail = run(resumed, bodies[cut:])
    assert head + tail == expected
    assert resumed.state_hash() == whole.state_hash()
    whole.venue.clearing.check_invariants()
    ids = [p[0] for r in expected for p in r.postings]
    assert len(ids) == len(set(ids))


def test_shard_machine_refused_command_after_due_funding_keeps_funding_and_logs_no_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Funding due at the clock runs before a refused order: it stays in that command's result."""
    m = ShardMachine(CONFIG, "MAIN")
    run(m, [*opening(), order("a1", "alice", "buy", 2), order("b1", "bob", "sell", 2)])
    later = NOW + CONFIG.instruments["BTC-PERP"].funding_interval_ms + 1
    caplog.clear()
    refused = m.apply(m.seq + 1, order("late", "alice", "buy", 1, ts_ms=later))
    assert refused.code == RiskCode.INDEX_STALE  # no quote for hours: new risk refused
    assert any(ev["type"] == "FundingPaid" for ev in refused.risk)
    assert refused.postings, "the funding's postings belong to the command they ran before"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
