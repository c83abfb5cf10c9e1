"""The shard feeder's rounds applied by a shard machine (pure: a fake clock, a scripted feed, no NATS).

A `Stream` here stands for the shard's command stream: appends with a message
id already stored are stored once (JetStream's duplicate window), every
stored command is applied in order by the machines following it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.commands import Advance, Deposit, Place, Quote, SeedInsurance, Tick
from exchange.engine.messages import NewOrder, Trade
from exchange.feeds import ScriptedFeed, SourceQuote
from exchange.feeds.simulated import SimulatedFeed
from exchange.instruments import ExchangeConfig, load_instruments
from exchange.risk.codes import RiskCode
from exchange.stream.shard.feeder import FeedAppend, FeedPlan, feeder_lease_key
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import (
    ShardCommand,
    ShardOp,
    ShardResult,
    command_decoder,
    encode_command,
    msg_id_of,
)
from tests.exchange.helpers import BTC, NOW, SOURCES, USDC, config

CONFIG = load_instruments()
PERP = "BTC-PERP"
ETH = 3_000 * USDC
STALENESS_MS = CONFIG.indices["BTC"].staleness_ms


@dataclass
class Stream:
    """A command stream (ids stored once) and the machines that follow it."""

    config: ExchangeConfig = CONFIG
    bodies: list[bytes] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    results: list[ShardResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.machine = ShardMachine(self.config, "MAIN")

    def append(self, msg_id: str, command: ShardCommand) -> ShardResult | None:
        """Store and apply ``command`` unless its id is already stored (None: a duplicate)."""
        if msg_id in self.ids:
            return None
        self.ids.add(msg_id)
        body = encode_command(command)
        self.bodies.append(body)
        result = self.machine.apply(len(self.bodies), body)
        self.results.append(result)
        return result

    def feed(self, appends: list[FeedAppend]) -> list[ShardResult]:
        """Append a feeder round; return the results of what was stored."""
        return [r for a in appends if (r := self.append(a.msg_id, a.command)) is not None]

    def cmd(self, op: ShardOp, ts_ms: int) -> ShardResult:
        """Append a gateway command under a fresh id."""
        result = self.append(f"r.test.{len(self.bodies)}", ShardCommand(op, ts_ms))
        assert result is not None
        return result

    def order(self, oid: str, account: str, side: str, qty: int, price: int, ts_ms: int,
              stamp: bool = True) -> ShardResult:
        """Append an order as a gateway would (the order stamped with its append time)."""
        order = NewOrder(oid, account, side, qty, price=price,  # type: ignore[arg-type]
                         ts=ts_ms * 1_000_000 if stamp else 0)
        result = self.append(msg_id_of(Place(PERP, order), ""), ShardCommand(Place(PERP, order), ts_ms))
        assert result is not None
        return result


@dataclass
class Feeder:
    """The pure part of a shard feeder: a plan, a scripted feed and a fake clock."""

    stream: Stream
    now_ms: int = NOW
    plan: FeedPlan = field(init=False)
    feed: ScriptedFeed = field(init=False)

    def __post_init__(self) -> None:
        self.plan = FeedPlan(self.stream.config, "MAIN")
        self.feed = ScriptedFeed(self.stream.config.indices)
        self.feed.set("BTC", BTC)
        self.feed.set("ETH", ETH)

    def round(self, at_ms: int | None = None) -> list[ShardResult]:
        """Run one round at ``at_ms`` (default: the fake clock) and append it."""
        ts = self.plan.stamp(self.now_ms if at_ms is None else at_ms)
        self.now_ms = ts
        appends, _ = self.plan.round(ts, self.feed.poll(ts))
        return self.stream.feed(appends)


def risk_types(results: list[ShardResult]) -> list[str]:
    return [e["type"] for r in results for e in r.risk]


def trade(s: Stream, maker: str, taker: str, qty: int, ts_ms: int, price: int = BTC) -> None:
    n = len(s.bodies)
    assert s.order(f"m{n}", maker, "sell", qty, price, ts_ms).code == 0
    taken = s.order(f"t{n}", taker, "buy", qty, price, ts_ms)
    assert taken.code == 0 and any(type(e) is Trade for _, e in taken.events)


# ------------------------------------------------------------------ the plan (no machine)


def test_feed_plan_round_appends_advance_quotes_then_ticks_with_stable_ids() -> None:
    plan = FeedPlan(CONFIG, "MAIN")
    feed = ScriptedFeed(CONFIG.indices)
    feed.set("BTC", BTC)
    appends, dropped = plan.round(NOW, feed.poll(NOW))
    ops = [type(a.command.cmd) for a in appends]
    assert ops == [Advance, Quote, Quote, Quote, Tick] and dropped == 0
    assert all(a.command.ts_ms == NOW for a in appends)
    assert appends[0].msg_id == f"r.adv.MAIN.{NOW}"
    assert {a.msg_id for a in appends[1:4]} == {f"r.feed.MAIN.BTC.{s}.{NOW}" for s in SOURCES}
    assert appends[4].msg_id == f"r.tick.MAIN.BTC.{NOW}"
    # The same round computed again (a retry after a crash) has the same ids: stored once.
    again, _ = FeedPlan(CONFIG, "MAIN").round(NOW, feed.poll(NOW))
    assert [a.msg_id for a in again] == [a.msg_id for a in appends]
    assert feeder_lease_key("MAIN") == "feeder.MAIN"


def test_feed_plan_lying_quotes_are_dropped_not_appended() -> None:
    plan = FeedPlan(CONFIG, "MAIN")
    bad = [SourceQuote("BTC", "mtgox", BTC, NOW),            # not a source of the index
           SourceQuote("DOGE", "coinbase", 1, NOW),          # not an underlying of the shard
           SourceQuote("BTC", "coinbase", 0, NOW),           # non-positive
           SourceQuote("BTC", "kraken", -5, NOW),
           SourceQuote("BTC", "kraken", 2**64, NOW),         # no replica's journal can hold it
           SourceQuote("BTC", "bitstamp", 60_000.5, NOW),    # type: ignore[arg-type]  # a float
           SourceQuote("BTC", "bitstamp", BTC, NOW + 1),     # from the future
           SourceQuote("BTC", "coinbase", True, NOW)]        # a bool is no price
    appends, dropped = plan.round(NOW, [*bad, SourceQuote("BTC", "kraken", BTC, NOW - 5)])
    quotes = [a.command.cmd for a in appends if type(a.command.cmd) is Quote]
    assert dropped == len(bad)
    assert quotes == [Quote("BTC", "kraken", BTC, NOW - 5)]


def test_feed_plan_clock_going_back_still_stamps_rounds_strictly_later() -> None:
    plan = FeedPlan(CONFIG, "MAIN")
    plan.raise_floor(NOW + 500)  # the last command already in the stream (a new term)
    first = plan.stamp(NOW)
    assert first == NOW + 501
    plan.round(first, [])
    assert plan.stamp(NOW - 10_000) == first + 1
    with pytest.raises(ValueError, match="must follow"):
        plan.round(first, [])


def test_feed_plan_advance_only_on_new_term_funding_boundary_or_expiry() -> None:
    plan = FeedPlan(config(funding_interval_ms=60_000), "MAIN")
    fut_expiry = CONFIG.instruments["BTC-27MAR26"].expiry_ms
    assert fut_expiry is not None
    assert plan.advance_due(NOW + 1)  # a new term always catches up
    plan.round(NOW + 1, [])
    assert not plan.advance_due(NOW + 59_999)
    assert plan.advance_due(NOW + 60_000)  # a funding boundary fell in (NOW + 1, NOW + 60,000]
    plan.last_ms = fut_expiry - 1
    assert plan.advance_due(fut_expiry)


def test_feed_plan_source_name_unfit_for_message_ids_refused_at_start() -> None:
    import dataclasses

    btc = dataclasses.replace(CONFIG.indices["BTC"], sources=("coinbase", "bad source"))
    with pytest.raises(ValueError, match="bad source"):
        FeedPlan(dataclasses.replace(CONFIG, indices={**CONFIG.indices, "BTC": btc}), "MAIN")


# ------------------------------------------------------------------ the plan applied by a machine


def test_feeder_mark_move_liquidates_in_stream_order_with_insurance_postings() -> None:
    s = Stream()
    f = Feeder(s)
    s.cmd(SeedInsurance(50 * USDC), NOW)
    for name, amount in (("short", 50_000 * USDC), ("lev", 1_500 * USDC), ("short2", 50_000 * USDC)):
        s.cmd(Deposit(name, amount), NOW)
    f.round(NOW)
    trade(s, "short", "lev", 600, NOW + 10)
    trade(s, "short2", "lev", 400, NOW + 20)
    lev = s.machine.venue.clearing.accounts["lev"]
    assert lev.positions[PERP].size == 1000
    f.feed.set("BTC", BTC - 3_000 * USDC)  # far past lev's bankruptcy price
    f.now_ms = NOW + 1_000
    results = f.round()
    ticks = [r for r in results if r.risk and "LiquidationStarted" in risk_types([r])]
    assert len(ticks) == 1, "the liquidation runs inside one command: the BTC tick"
    tick = ticks[0]
    body = s.bodies[tick.seq - 1]
    assert b'"op":"tick"' in body and b'"underlying":"BTC"' in body
    assert {"LiquidationStarted", "InsuranceUsed", "Deleveraged"} <= set(risk_types([tick]))
    insurance = [p for p in tick.postings if p[2] == "insurance"]
    assert insurance == [(insurance[0][0], "single", "insurance", "m:lev", 50 * USDC, None)]
    assert not any(p.size for p in lev.positions.values()) and lev.cash == 0
    assert s.machine.venue.clearing.insurance == 0
    # Every posting of the stream has its own id, a function of the stream only.
    ids = [p[0] for r in s.results for p in r.postings]
    assert len(ids) == len(set(ids)) and all(i.startswith("s.MAIN.") for i in ids)
    s.machine.venue.clearing.check_invariants()


def test_feeder_funding_paid_at_the_boundary_with_zero_sum_postings() -> None:
    s = Stream(config(funding_interval_ms=60_000))
    f = Feeder(s)
    for name in ("a", "b"):
        s.cmd(Deposit(name, 10_000 * USDC), NOW)
    f.round(NOW)
    trade(s, "a", "b", 1000, NOW + 10)  # b long 1 BTC, a short
    funded: list[ShardResult] = []
    for k in range(1, 62):  # one round a second across the boundary at NOW + 60 s
        f.now_ms = NOW + k * 1_000
        results = f.round()
        funded += [r for r in results if "FundingPaid" in risk_types([r])]
    assert len(funded) == 1
    paid = next(e for e in funded[0].risk if e["type"] == "FundingPaid" and e["symbol"] == PERP)
    assert paid["ts_ms"] == NOW + 60_000 and paid["rate_ppm"] == 100  # interest only: no basis
    body = s.bodies[funded[0].seq - 1]
    assert b'"op":"advance"' in body, "the feeder's Advance carries the boundary"
    amount = 1000 * paid["mark"] // CONFIG.instruments[PERP].contracts_per_unit * 100 // 1_000_000
    mine = [p for p in funded[0].postings if "m:a" in p[2:4] or "m:b" in p[2:4]]
    assert sorted(p[2:5] for p in mine) == sorted([("m:b", "clearing", amount),
                                                   ("clearing", "m:a", amount)])


def test_feeder_dead_across_the_boundary_funding_still_paid_before_the_next_order() -> None:
    s = Stream(config(funding_interval_ms=60_000))
    f = Feeder(s)
    for name in ("a", "b"):
        s.cmd(Deposit(name, 10_000 * USDC), NOW)
    f.round(NOW)
    trade(s, "a", "b", 1000, NOW + 10)
    # No feeder round after NOW: the first command stamped past the boundary pays it first.
    late = s.cmd(Deposit("c", 1 * USDC), NOW + 60_500)
    assert "FundingPaid" in risk_types([late])
    assert s.machine.venue.funding_history[-1].ts_ms == NOW + 60_000


def test_feeder_stopped_order_after_staleness_refused_then_accepted_after_fresh_quotes() -> None:
    s = Stream()
    f = Feeder(s)
    s.cmd(Deposit("alice", 10_000 * USDC), NOW)
    for k in range(3):
        f.round(NOW + k * 1_000)
    last = NOW + 2_000
    assert s.order("o1", "alice", "buy", 1, BTC - 100 * USDC, last + STALENESS_MS).code == 0
    # The feeder died at `last`: an order stamped past the staleness limit is refused.
    refused = s.order("o2", "alice", "buy", 1, BTC - 100 * USDC, last + STALENESS_MS + 1)
    assert refused.code == RiskCode.INDEX_STALE and "stale" in refused.message
    assert not refused.postings and not refused.events
    # An order without a timestamp of its own is judged at the shard clock all the same.
    unstamped = s.order("o3", "alice", "buy", 1, BTC - 100 * USDC, last + STALENESS_MS + 2,
                        stamp=False)
    assert unstamped.code == RiskCode.INDEX_STALE
    f.round(last + STALENESS_MS + 5)  # a feeder (a standby taking over) quotes again
    assert s.order("o4", "alice", "buy", 1, BTC - 100 * USDC, last + STALENESS_MS + 6).code == 0


def test_feeder_order_stamped_before_a_round_lands_between_its_quotes_and_tick_not_refused() -> None:
    """An order appended among the feeder's quotes but stamped earlier must not see them as future."""
    s = Stream()
    f = Feeder(s)
    s.cmd(Deposit("alice", 10_000 * USDC), NOW)
    f.round(NOW)
    appends, _ = f.plan.round(NOW + 1_000, f.feed.poll(NOW + 1_000))
    quotes = [a for a in appends if type(a.command.cmd) is Quote and a.command.cmd.underlying == "BTC"]
    rest = [a for a in appends if a not in quotes[:2]]
    s.feed(quotes[:2])  # two of three BTC sources quoted at NOW + 1,000 ...
    # ... when an order the gateway stamped at NOW + 900 is stored.
    assert s.order("o1", "alice", "buy", 1, BTC - 100 * USDC, NOW + 900).code == 0
    s.feed(rest)


def test_feeder_failover_with_a_slower_clock_keeps_ticks_in_time_order_in_the_twap_window() -> None:
    s = Stream()
    fut = CONFIG.instruments["BTC-27MAR26"]
    assert fut.expiry_ms is not None
    start = fut.expiry_ms - fut.settlement_window_ms
    old = Feeder(s)
    old.round(start + 10_000)
    # The new leader's clock is 5 s behind; it starts above the last command in the stream.
    new = Feeder(s)
    new.plan.raise_floor(start + 10_000)
    results = new.round(start + 5_000)
    assert all(r.code == 0 for r in results)
    # Even a tick appended below the shard clock (a deposed leader's late round) is run at the
    # clock, never back in time: the settlement TWAP keeps its samples in order.
    late = [s.cmd(Quote("BTC", source, BTC, start + 1_000), start + 1_000) for source in SOURCES]
    late.append(s.cmd(Tick("BTC", start + 1_000), start + 1_000))
    assert [r.code for r in late] == [0] * 4, late[-1].message
    assert s.machine.venue.index_state["BTC"].ts_ms == start + 10_001
    twap = s.machine.venue.twaps["BTC-27MAR26"]
    times = [t for t, _ in twap.samples]
    assert times == sorted(times)


def test_feeder_stream_replayed_gives_same_results_and_state_hash() -> None:
    s = Stream()
    f = Feeder(s)
    f.feed = SimulatedFeed(CONFIG.indices, seed=7)  # type: ignore[assignment]
    s.cmd(SeedInsurance(1_000 * USDC), NOW)
    for name in ("mm", "t"):
        s.cmd(Deposit(name, 100_000 * USDC), NOW)
    for k in range(30):
        f.round(NOW + k * 1_000)
        mark = s.machine.venue.clearing.marks.get(PERP)
        if mark and k % 3 == 0:
            trade(s, "mm", "t", 10, NOW + k * 1_000 + 1, price=mark)
    replay = ShardMachine(CONFIG, "MAIN")
    assert replay.apply_many(list(enumerate(s.bodies, 1))) == s.results
    assert replay.state_hash() == s.machine.state_hash()
    midway = ShardMachine(CONFIG, "MAIN")
    midway.apply_many(list(enumerate(s.bodies[:40], 1)))
    resumed = ShardMachine.restore(CONFIG, "MAIN", midway.snapshot())
    resumed.apply_many([(i, b) for i, b in enumerate(s.bodies, 1) if i > 40])
    assert resumed.state_hash() == s.machine.state_hash()


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(-3_000, 15_000), st.booleans(), st.integers(-50, 50)),
                min_size=1, max_size=25))
def test_feeder_any_clock_and_retry_pattern_ticks_monotonic_and_replays_identically(
        steps: list[tuple[int, bool, int]]) -> None:
    """Whatever the clock does and whichever rounds are retried, the index moves forward in time."""
    s = Stream()
    f = Feeder(s)
    s.cmd(Deposit("alice", 10_000 * USDC), NOW)
    clock = NOW
    for jump_ms, retry, move in steps:
        clock += jump_ms
        f.feed.set("BTC", BTC + move * USDC)
        ts = f.plan.stamp(clock)
        appends, _ = f.plan.round(ts, f.feed.poll(ts))
        s.feed(appends)
        if retry:
            assert s.feed(appends) == [], "a retried round is stored once"
    # The last command is a tick: it ran at the shard clock (never below a stamp seen before).
    assert s.machine.venue.index_state["BTC"].ts_ms == max(f.plan.last_ms or 0, s.machine.clock_ms)
    replay = ShardMachine(CONFIG, "MAIN")
    assert replay.apply_many(list(enumerate(s.bodies, 1))) == s.results
    assert replay.state_hash() == s.machine.state_hash()
    stamps = [command_decoder.decode(b).ts_ms for b in s.bodies[1:]]
    assert stamps == sorted(stamps)


# ------------------------------------------------------------------ the documented example


def test_feeder_doc_round_example_is_what_the_plan_appends() -> None:
    import json
    import re
    from pathlib import Path

    from exchange.instruments import MARKET_CONFIG

    doc = (Path(__file__).resolve().parents[3] / "docs" / "scale-out.md").read_text()
    [block] = [b for b in re.findall(r"```json\n(.*?)```", doc, re.S) if b.startswith('[["r.adv.')]
    example = [(msg_id, json.dumps(body, separators=(",", ":")).encode())
               for msg_id, body in json.loads(block)]
    commands = [command_decoder.decode(body) for _, body in example]
    ts = commands[0].ts_ms
    quotes = [SourceQuote(c.cmd.underlying, c.cmd.source, c.cmd.price, c.cmd.ts_ms)
              for c in commands if type(c.cmd) is Quote]
    market = load_instruments(MARKET_CONFIG)
    plan = FeedPlan(market, "MAIN")
    plan.last_ms = ts - 1_000  # the previous round, a second before the funding boundary
    appends, dropped = plan.round(ts, quotes)
    assert dropped == 0
    assert [(a.msg_id, encode_command(a.command)) for a in appends] == example
    results = ShardMachine(market, "MAIN").apply_many(list(enumerate((b for _, b in example), 1)))
    assert [r.code for r in results] == [0] * len(example)


# ------------------------------------------------------------------ the command line (no NATS needed)


@pytest.mark.parametrize(("args", "problem"), [
    (["--shard", "bad name"], "must match"),
    (["--name", "a b"], "feeder name"),
    (["--interval-ms", "10"], "interval-ms"),
    (["--source", "tea-leaves"], "source"),
])
def test_feeder_cli_bad_options_refused_before_connecting(args: list[str], problem: str) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    done = CliRunner().invoke(main, ["shard-feeder", "--nats", "nats://127.0.0.1:1", *args])
    assert done.exit_code == 2 and problem in done.output, done.output
