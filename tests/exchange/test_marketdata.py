"""The market-data read model: fills with fees and flags, closed positions, funding, restart rebuild."""

from __future__ import annotations

from pathlib import Path

from exchange.engine.journal import FsyncPolicy
from exchange.engine.messages import NewOrder, Trade
from exchange.instruments import load_instruments
from exchange.marketdata import MarketData
from exchange.recovery import DurableVenue
from exchange.venue import NS_PER_MS, Venue

from .helpers import BTC, NOW, USDC, move, venue
from .venue_streams import apply_batch, random_batches

PERP = "BTC-PERP"


def order(id: str, account: str, side: str, qty: int, price: int | None = BTC, **kw: object) -> NewOrder:
    return NewOrder(id=id, account=account, side=side, qty=qty, price=price, **kw)  # type: ignore[arg-type]


def trade(v: Venue, maker: str, taker: str, qty: int, price: int = BTC, ts_ms: int = NOW) -> None:
    assert v.place(PERP, order(f"m{maker}{v.clearing.seq}", maker, "sell", qty, price,
                               ts=ts_ms * NS_PER_MS)).code == 0
    r = v.place(PERP, order(f"t{v.clearing.seq}{taker}", taker, "buy", qty, price, ts=ts_ms * NS_PER_MS))
    assert any(type(e) is Trade for e in r.events)


def watched(v: Venue) -> MarketData:
    md = MarketData()
    md.attach(v)
    return md


def test_marketdata_trade_records_fee_trade_id_and_both_sides() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC})
    md = watched(v)
    trade(v, "a", "b", 1000, ts_ms=NOW + 5)
    v.drain()
    md.catch_up()
    (taker,), (maker,) = md.fills["b"], md.fills["a"]
    assert taker["trade_id"] == maker["trade_id"] == md.trades[PERP][-1]["trade_id"]
    # 60,000 USDC notional: taker 0.05 % = 30 USDC, maker rebate 0.01 % = -6 USDC.
    assert (taker["fee"], maker["fee"]) == (30 * USDC, -6 * USDC)
    assert taker["liquidity"] == "taker" and maker["liquidity"] == "maker"
    assert taker["time_ms"] == NOW + 5 and not taker["liquidation"] and not taker["adl"]
    assert [r["type"] for r in md.income["b"]] == ["fee"] and md.income["b"][0]["amount"] == -30 * USDC
    assert md.open_interest[PERP] == 1000 and md.broken is None


def test_marketdata_flat_position_stays_in_history_with_realised_pnl() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC, "c": 10_000 * USDC})
    md = watched(v)
    trade(v, "a", "b", 1000)  # b long 1 BTC at 60,000
    move(v, "BTC", BTC + 1_000 * USDC, NOW + 1000)
    assert v.place(PERP, order("c1", "c", "buy", 1000, BTC + 1_000 * USDC)).code == 0
    assert v.place(PERP, order("b2", "b", "sell", 1000, BTC + 1_000 * USDC)).code == 0
    v.drain()
    md.catch_up()
    assert PERP not in v.clearing.accounts["b"].positions  # the clearing house forgot it
    (closed,) = md.closed_positions["b"]
    assert closed["realised_pnl"] == 1_000 * USDC and closed["side"] == "long"
    assert ("b", PERP) not in md.shadows
    realised = [r for r in md.income["b"] if r["type"] == "realised_pnl"]
    assert [r["amount"] for r in realised] == [1_000 * USDC]


def test_marketdata_liquidation_fill_carries_nanoseconds_like_every_fill() -> None:
    v = venue(accounts={"mm": 200_000 * USDC, "lev": 1_500 * USDC, "bid": 200_000 * USDC})
    md = watched(v)
    trade(v, "mm", "lev", 1000)
    for i, px in enumerate(range(BTC - 900 * USDC, BTC - 1_500 * USDC, -100 * USDC)):
        assert v.place(PERP, order(f"bid{i}", "bid", "buy", 300, px, ts=NOW * NS_PER_MS)).code == 0
    move(v, "BTC", BTC - 900 * USDC, NOW + 1000)
    v.drain()
    md.catch_up()
    kept = list(v.fills["lev"])
    liquidation = [f for f in kept if f["order_id"].startswith("liq.")]
    assert liquidation and all(f["ts"] == (NOW + 1000) * NS_PER_MS for f in liquidation)
    assert all(f["ts"] >= NOW * NS_PER_MS for f in kept)  # one unit: nanoseconds
    flagged = [f for f in md.fills["lev"] if f["liquidation"]]
    assert flagged and all(f["time_ms"] == NOW + 1000 for f in flagged)
    assert any(r["type"] == "liquidation_fee" for r in md.income["lev"])
    assert md.liquidations[PERP] and "lev" not in str(list(md.liquidations[PERP]))


def test_marketdata_adl_counterparty_sees_its_adl_fill() -> None:
    v = venue(insurance=50 * USDC, accounts={"short": 50_000 * USDC, "lev": 1_500 * USDC,
                                             "short2": 50_000 * USDC})
    md = watched(v)
    trade(v, "short", "lev", 600)
    trade(v, "short2", "lev", 400)
    move(v, "BTC", BTC - 3_000 * USDC, NOW + 1000)  # far past bankruptcy, an empty book: ADL
    v.drain()
    md.catch_up()
    assert md.broken is None
    for account, qty in (("short", 600), ("short2", 400)):
        adl = [f for f in md.fills[account] if f["adl"]]
        assert [(f["side"], f["qty"], f["liquidity"]) for f in adl] == [("buy", qty, "adl")]
        assert adl[0]["price"] == BTC - 3_000 * USDC
        assert md.closed_positions[account][-1]["side"] == "short"
    lev_adl = [f for f in md.fills["lev"] if f["adl"]]
    assert sum(f["qty"] for f in lev_adl) == 1000 and all(f["side"] == "sell" for f in lev_adl)
    assert md.open_interest[PERP] == 0


def test_marketdata_funding_is_attributed_per_account_and_sums_to_the_cleared_total() -> None:
    v = venue(accounts={"a": 10_000 * USDC, "b": 10_000 * USDC})
    md = watched(v)
    trade(v, "a", "b", 1000)
    v.drain()
    md.catch_up()
    v.advance(NOW + 8 * 3_600_000)
    v.drain()
    md.catch_up()
    assert md.broken is None
    paid = [r for r in md.income["b"] if r["type"] == "funding"]
    got = [r for r in md.income["a"] if r["type"] == "funding"]
    assert paid and got and paid[0]["amount"] == -got[0]["amount"]
    (btc,) = [e for e in v.funding_history if e.symbol == PERP]
    assert paid[0]["amount"] == -btc.total != 0


def _journaled(directory: Path, batches: list[list[tuple[object, ...]]]) -> tuple[DurableVenue, MarketData]:
    md = MarketData()
    durable, _ = DurableVenue.open(directory, load_instruments(), policy=FsyncPolicy.NEVER,
                                   snapshot_every=40, observe=md.recovering(directory))
    durable.on_snapshot = md.save_snapshot
    for batch in batches:
        apply_batch(durable.venue, batch)
        durable.venue.drain()
        durable.commit()
        if durable.snapshot_due():
            durable.snapshot()
    return durable, md


def test_marketdata_rebuilt_on_restart_equals_the_live_model(tmp_path: Path) -> None:
    batches = random_batches(seed=20, count=150)
    durable, live = _journaled(tmp_path, batches)
    assert live.broken is None and any(live.fills.values()) and list(tmp_path.glob("marketdata-*.snap"))
    expected = live.state()
    durable.close()
    again = MarketData()
    reopened, _ = DurableVenue.open(tmp_path, load_instruments(), policy=FsyncPolicy.NEVER,
                                    snapshot_every=40, observe=again.recovering(tmp_path))
    assert again.broken is None
    assert again.state() == expected
    assert again.depth == live.depth  # the sequence restarts at the book's (clients resync)
    reopened.close()


def test_marketdata_depth_mirror_matches_the_book_after_random_trading() -> None:
    v = Venue(load_instruments())
    md = watched(v)
    for batch in random_batches(seed=7, count=200):
        apply_batch(v, batch)
        v.drain()
    md.catch_up()
    assert md.broken is None
    for symbol, book in v.books.items():
        snap = book.depth_snapshot(10_000)
        bids, asks = md.depth.get(symbol, ({}, {}))
        assert {p: (q, c) for p, q, c in snap.bids} == bids
        assert {p: (q, c) for p, q, c in snap.asks} == asks
