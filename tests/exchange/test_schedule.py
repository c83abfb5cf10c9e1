"""The market scheduler: funding at its boundaries, missed intervals in order, expiry on time."""

from __future__ import annotations

from pathlib import Path

from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from exchange.engine.messages import NewOrder
from exchange.feeds import ScriptedFeed
from exchange.instruments import load_instruments
from exchange.risk.codes import RiskCode
from exchange.schedule import MarketScheduler
from exchange.service import ExchangeService
from tests.exchange.market_helpers import BTC, HOUR_MS, USDC, Market

NOW = 1_767_225_600_000 + 3 * HOUR_MS  # 2026-01-01T03:00Z; next funding boundary 08:00
BOUNDARY = 1_767_225_600_000 + 8 * HOUR_MS
EXPIRY = 1_774_598_400_000  # 2026-03-27T08:00Z, the reference set's dated instruments


def _open_perp(m: Market, qty: int) -> None:
    """The maker rests a bid and an ask; the long lifts ``qty`` at the ask."""
    assert m.order("maker", "BTC-PERP", "sell", 1_000, BTC + 100 * USDC).code == 0
    assert m.order("maker", "BTC-PERP", "buy", 1_000, BTC - 100 * USDC).code == 0
    assert m.order("long", "BTC-PERP", "buy", qty, BTC + 100 * USDC).code == 0


def _market(sqlite_url: str, now_ms: int = NOW) -> Market:
    m = Market(sqlite_url, now_ms)
    m.at(now_ms)
    for who in ("maker", "long"):
        m.fund(who, 1_000_000 * USDC)
    return m


def test_scheduler_funding_at_boundary_pays_once_at_its_own_time(sqlite_url: str) -> None:
    m = _market(sqlite_url)
    _open_perp(m, 100)
    m.at(BOUNDARY - 1_000)
    assert m.v.funding_history == []
    m.at(BOUNDARY + 500)
    m.at(BOUNDARY + 1_500)
    paid = [e for e in m.v.funding_history if e.symbol == "BTC-PERP"]
    assert [e.ts_ms for e in paid] == [BOUNDARY]
    assert paid[0].total > 0 and m.v.next_funding_ms["BTC-PERP"] == BOUNDARY + 8 * HOUR_MS


def test_scheduler_missed_intervals_settle_in_order_on_the_positions_of_each_moment(sqlite_url: str) -> None:
    m = _market(sqlite_url)
    _open_perp(m, 100)
    # Nobody runs the scheduler across the 08:00 boundary; an order arrives at 09:00. The
    # service settles 08:00 first, on the 100-lot position of that moment, then trades.
    m.clock.now_ms = BOUNDARY + HOUR_MS
    m.feed.set("BTC", BTC)
    assert m.order("long", "BTC-PERP", "buy", 300, BTC + 100 * USDC).code == RiskCode.INDEX_STALE
    m.scheduler.run_due()  # fresh prices; the boundary was already paid before that order
    first = [e for e in m.v.funding_history if e.symbol == "BTC-PERP"]
    assert [e.ts_ms for e in first] == [BOUNDARY]
    assert m.order("long", "BTC-PERP", "buy", 300, BTC + 100 * USDC).code == 0
    assert m.size("long", "BTC-PERP") == 400
    # The server is down for two more boundaries; on restart each is paid in order, at its own
    # time, on the 400-lot position (the one in force at each of those moments).
    m.at(BOUNDARY + 16 * HOUR_MS + 60_000)
    paid = [e for e in m.v.funding_history if e.symbol == "BTC-PERP"]
    assert [e.ts_ms for e in paid] == [BOUNDARY, BOUNDARY + 8 * HOUR_MS, BOUNDARY + 16 * HOUR_MS]
    mark = paid[1].mark
    for e in paid[1:]:
        assert e.total == 400 * mark // 1000 * abs(e.rate_ppm) // 1_000_000
    assert paid[0].total == 100 * paid[0].mark // 1000 * abs(paid[0].rate_ppm) // 1_000_000


def test_scheduler_missed_intervals_replay_identically_from_the_journal(sqlite_url: str,
                                                                          tmp_path: Path) -> None:
    ledger = Ledger(make_session_factory(make_engine(sqlite_url)))
    config = load_instruments()
    svc = ExchangeService.open(ledger, config, tmp_path / "x")
    clock = [NOW]
    svc.clock = lambda: clock[0]
    feed = ScriptedFeed(config.indices)
    feed.set("BTC", BTC)
    feed.set("ETH", 3_000 * USDC)
    scheduler = MarketScheduler(svc, lambda: clock[0], feed, calendar=False)
    scheduler.run_due()
    for who in ("maker", "long"):
        svc.credit_deposit(who, 10**12, f"dep-{who}")
        with svc.command() as v:
            v.deposit(who, 10**12)
    with svc.command() as v:
        for oid, who, side in (("s", "maker", "sell"), ("b", "long", "buy")):
            v.place("BTC-PERP", NewOrder(id=oid, account=who, side=side, qty=100,  # type: ignore[arg-type]
                                         price=BTC, ts=NOW * 10**6))
    clock[0] = BOUNDARY + 24 * HOUR_MS + 1
    scheduler.run_due()
    expected = svc.venue.state_hash()
    history = [(e.ts_ms, e.total) for e in svc.venue.funding_history if e.symbol == "BTC-PERP"]
    assert [ts for ts, _ in history] == [BOUNDARY + i * 8 * HOUR_MS for i in range(4)]
    assert svc.durable is not None
    svc.durable.close()  # a crash: the journal holds the commands, no snapshot
    again = ExchangeService.open(ledger, config, tmp_path / "x")
    assert again.venue.state_hash() == expected
    assert [(e.ts_ms, e.total) for e in again.venue.funding_history if e.symbol == "BTC-PERP"] == history
    again.close()


def test_expired_instrument_refuses_orders_at_expiry_before_settlement(sqlite_url: str) -> None:
    m = _market(sqlite_url, EXPIRY - HOUR_MS)
    fut = "BTC-27MAR26"
    assert m.order("maker", fut, "sell", 10, BTC + 100 * USDC).code == 0
    # The order's own time is past expiry: refused even though nothing has settled yet.
    m.svc.clock = None
    m.clock.now_ms = EXPIRY
    r = m.order("long", fut, "buy", 10, BTC + 100 * USDC)
    assert r.code == RiskCode.INSTRUMENT_NOT_TRADING and "expired" in r.message
    assert m.v.clearing.trading[fut] and m.v.settlement_history == []


def test_scheduler_expires_and_settles_at_expiry_time(sqlite_url: str) -> None:
    m = _market(sqlite_url, EXPIRY - HOUR_MS)
    fut = "BTC-27MAR26"
    assert m.order("maker", fut, "sell", 10, BTC + 100 * USDC).code == 0
    assert m.order("long", fut, "buy", 10, BTC + 100 * USDC).code == 0
    assert m.order("maker", fut, "sell", 5, BTC + 200 * USDC).code == 0  # rests until expiry
    for t in range(EXPIRY - 40 * 60_000, EXPIRY, 60_000):
        m.at(t)
    assert m.v.clearing.trading[fut]
    m.at(EXPIRY + 700)
    settled = {e.symbol: e for e in m.v.settlement_history}
    assert set(settled) == {"BTC-27MAR26", "BTC-27MAR26-60000-C", "BTC-27MAR26-50000-P", "ETH-27MAR26-3000-C"}
    assert settled[fut].ts_ms == EXPIRY and settled[fut].price == BTC
    assert not m.v.clearing.trading[fut] and not m.v.books[fut].orders
    assert m.size("long", fut) == 0
    assert m.order("long", fut, "buy", 1, BTC).code == RiskCode.INSTRUMENT_NOT_TRADING


def test_stale_feed_halts_risk_increasing_orders_but_not_reducing_ones(sqlite_url: str) -> None:
    m = _market(sqlite_url)
    _open_perp(m, 100)
    m.feed.silence("BTC")
    m.at(NOW + 11_000)  # the last quotes are 11 s old, the index needs them within 10 s
    r = m.order("long", "BTC-PERP", "buy", 10, BTC + 100 * USDC)
    assert r.code == RiskCode.INDEX_STALE and "stale" in r.message
    assert m.order("fresh", "BTC-PERP", "sell", 10, BTC).code == RiskCode.INDEX_STALE
    # Closing risk stays possible: a plain sell that only shrinks the long, and reduce-only.
    assert m.order("long", "BTC-PERP", "sell", 40, BTC - 100 * USDC).code == 0
    assert m.order("long", "BTC-PERP", "sell", 10, BTC - 100 * USDC, reduce_only=True).code == 0
    assert m.size("long", "BTC-PERP") == 50
    # ETH still quotes: its instruments keep trading.
    assert m.order("maker", "ETH-PERP", "buy", 10, 2_990 * USDC).code == 0
    m.feed.set("BTC", BTC)
    m.at(NOW + 12_000)
    assert m.order("long", "BTC-PERP", "buy", 10, BTC + 100 * USDC).code == 0


def test_stale_check_runs_at_each_order_time_not_at_the_last_tick(sqlite_url: str) -> None:
    m = _market(sqlite_url)
    _open_perp(m, 10)
    # No scheduler run since NOW: the last published index says fresh, the clock says 3 min.
    m.clock.now_ms = NOW + 180_000
    assert m.v.index_state["BTC"].stale is False
    assert m.order("long", "BTC-PERP", "buy", 10, BTC + 100 * USDC).code == RiskCode.INDEX_STALE


def test_amend_past_expiry_or_growing_risk_on_a_stale_index_is_refused(sqlite_url: str) -> None:
    from exchange.engine.messages import Amend

    m = _market(sqlite_url, EXPIRY - HOUR_MS)
    assert m.order("maker", "BTC-27MAR26", "sell", 10, BTC + 100 * USDC).code == 0
    assert m.order("maker", "BTC-PERP", "sell", 10, BTC + 100 * USDC).code == 0
    fut_id, perp_id = f"maker.{m._n - 1}", f"maker.{m._n}"
    m.svc.clock = None  # the pure venue: no settlement has run
    m.feed.silence("BTC")
    m.clock.now_ms = EXPIRY
    with m.svc.command() as v:
        r = v.amend("BTC-27MAR26", Amend(fut_id, 20, None, "maker", EXPIRY * 1_000_000))
        assert r.code == RiskCode.INSTRUMENT_NOT_TRADING
        r = v.amend("BTC-PERP", Amend(perp_id, 20, None, "maker", EXPIRY * 1_000_000))
        assert r.code == RiskCode.INDEX_STALE
        r = v.amend("BTC-PERP", Amend(perp_id, 5, None, "maker", EXPIRY * 1_000_000))
        assert r.code == RiskCode.OK and v.books["BTC-PERP"].orders[perp_id].qty == 5
