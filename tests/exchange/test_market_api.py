"""The self-running market through the API: feed-driven trading, dev-only overrides, stale halts."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from exchange.marketmaker import MAKER, TAKER, DemoMarketMaker
from exchange.schedule import MarketScheduler
from policies.roles import Role
from strongroom.jobs import exchange_feed, market_scheduler
from tests.exchange.test_api import BASE, BTC, USDC, Caller


def _scheduler(app: Flask) -> MarketScheduler:
    scheduler = market_scheduler(app)
    assert scheduler is not None
    return scheduler


def test_fresh_install_trades_on_the_default_feed_without_operator_quotes(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    app.extensions["strongroom.exchange"].credit_deposit("alice", 10_000 * USDC, "dep-alice")
    _scheduler(app).run_due()  # the simulated feed: no admin, no quotes posted
    r = alice.call("GET", f"{BASE}/prices")
    index = r.get_json()["index"]["BTC"]
    assert index["stale"] is False and index["fresh_sources"] == 3 and index["price"] > 0
    assert alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC}).status_code == 200
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a1", "side": "buy", "qty": 10,
                                              "price": index["price"] // 100_000 * 100_000})
    assert r.status_code == 201, r.get_json()


def test_price_override_is_refused_outside_dev_mode(app: Flask, client: FlaskClient, clock: Any) -> None:
    admin = Caller(app, client, clock, "ops", {Role.ADMIN})
    r = admin.call("POST", f"{BASE}/operator/quotes", {"underlying": "BTC", "source": "kraken", "price": BTC})
    assert r.status_code == 403
    body = r.get_json()
    assert body["code"] == 2020 and body["error"] == "price_override_disabled"
    assert "dev mode" in body["message"]
    assert app.extensions["strongroom.exchange"].venue.indices["BTC"].quotes == {}
    app.config["EXCHANGE_DEV_MODE"] = True
    r = admin.call("POST", f"{BASE}/operator/quotes", {"underlying": "BTC", "source": "kraken", "price": BTC})
    assert r.status_code == 200


def test_stale_index_refuses_new_risk_with_2010_and_reports_stale(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    app.extensions["strongroom.exchange"].credit_deposit("alice", 10_000 * USDC, "dep-alice")
    _scheduler(app).run_due()
    assert alice.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC}).status_code == 200
    clock.advance(30_000)  # the feed stopped: nobody polled it for 30 s
    assert alice.call("GET", f"{BASE}/prices").get_json()["index"]["BTC"]["stale"] is True
    r = alice.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": "a1", "side": "buy", "qty": 10,
                                              "price": BTC})
    assert r.status_code == 409
    assert r.get_json()["code"] == 2010 and r.get_json()["error"] == "index_stale"


def test_funding_countdown_shows_next_time_and_predicted_rate(
        app: Flask, client: FlaskClient, clock: Any) -> None:
    alice = Caller(app, client, clock, "alice", {Role.TRADER})
    _scheduler(app).run_due()
    body = alice.call("GET", f"{BASE}/funding").get_json()
    perp = {n["symbol"]: n for n in body["next"]}["BTC-PERP"]
    interval = 8 * 3_600_000
    assert perp["next_funding_ms"] % interval == 0 and perp["interval_ms"] == interval
    assert 0 < perp["countdown_ms"] <= interval
    assert perp["countdown_ms"] == perp["next_funding_ms"] - body["now_ms"]
    assert isinstance(perp["predicted_rate_ppm"], int)


def test_demo_market_maker_keeps_two_sided_books_and_trades_on_a_fake_clock(
        app: Flask, clock: Any) -> None:
    svc = app.extensions["strongroom.exchange"]
    settings = app.extensions["strongroom.settings"]
    feed = exchange_feed("simulated", 9, svc.venue.config.indices)
    maker = DemoMarketMaker(svc, seed=9)
    scheduler = MarketScheduler(svc, clock, feed, calendar=False, participants=(maker,))
    assert settings.exchange_demo_maker is False  # the server only runs it when configured
    for _ in range(30):
        scheduler.run_due()
        clock.advance(1_000)
    v = svc.venue
    for symbol, book in v.books.items():
        if v.clearing.trading[symbol] and symbol in v.clearing.marks:
            assert book.best_bid() is not None and book.best_ask() is not None, symbol
            assert book.best_bid() < v.clearing.marks[symbol] < book.best_ask(), symbol
    traded = [f for f in v.fills.get(TAKER, [])]
    assert len(traded) >= 3
    assert any(p.size for p in v.clearing.accounts[MAKER].positions.values())
    assert svc.reconcile() == []


def test_server_runs_the_market_as_its_own_job_every_second(app: Flask) -> None:
    from strongroom.jobs import exchange_jobs

    jobs = exchange_jobs(app)
    assert [(j.name, j.interval_s) for j in jobs] == [("exchange_market", 1.0)]
    assert exchange_feed("none", 1, {}) is None
