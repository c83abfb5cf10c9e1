"""KYC tier and jurisdiction caps at order entry: the exchange API refuses orders over the caller's limits."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from policies.api_key import Scope
from policies.request_signing import sign_request
from policies.roles import Role

from .conftest import services

BASE = "/api/v1/exchange"
USDC = 1_000_000
BTC = 60_000 * USDC  # BTC-PERP: 1 contract = 0.001 BTC, so 1000 contracts are 60,000 USD


class Trader:
    """A user with an API key; every request is HMAC-signed at the fake clock's time."""

    def __init__(self, app: Flask, clock: Any, name: str, roles: set[Role], tier: int) -> None:
        _, key = services(app).users.create_user(name, frozenset(roles), kyc_tier=tier,
                                                 key_scopes=frozenset(Scope))
        self.app, self.clock, self.name = app, clock, name
        self.key_id, self.secret = key.credentials.key_id, key.credentials.secret

    def signed(self, method: str, path: str, body: Any = None) -> tuple[bytes, dict[str, str]]:
        raw = b"" if body is None else json.dumps(body).encode()
        self.clock.advance(1)
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=self.clock.now_ms,
                               method=method, path=path, query="", body=raw)
        return raw, headers

    def send(self, client: FlaskClient, method: str, path: str, raw: bytes,
             headers: dict[str, str]) -> TestResponse:
        return client.open(path, method=method, data=raw, headers=headers,
                           content_type="application/json" if raw else None,
                           environ_base={"REMOTE_ADDR": "127.0.0.1"})

    def call(self, method: str, path: str, body: Any = None) -> TestResponse:
        raw, headers = self.signed(method, path, body)
        return self.send(self.app.test_client(), method, path, raw, headers)

    def order(self, oid: str, side: str, qty: int, price: int = BTC, **extra: Any) -> TestResponse:
        return self.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": oid, "side": side,
                                                    "qty": qty, "price": price, **extra})


@pytest.fixture
def market(app: Flask, clock: Any) -> Trader:
    """An admin who marks BTC at 60,000 USD; returns the admin."""
    admin = Trader(app, clock, "ops", {Role.ADMIN}, 0)
    app.config["EXCHANGE_DEV_MODE"] = True  # the tests hand-set the index (docs/market.md)
    for source in ("coinbase", "kraken", "bitstamp"):
        r = admin.call("POST", f"{BASE}/operator/quotes",
                       {"underlying": "BTC", "source": source, "price": BTC})
        assert r.status_code == 200, r.get_json()
    return admin


def trader(app: Flask, clock: Any, name: str, tier: int, collateral_usdc: int) -> Trader:
    who = Trader(app, clock, name, {Role.TRADER}, tier)
    svc = app.extensions["strongroom.exchange"]
    svc.credit_deposit(name, collateral_usdc * USDC, f"dep-{name}")
    r = who.call("POST", f"{BASE}/collateral/deposit", {"amount": collateral_usdc * USDC})
    assert r.status_code == 200, r.get_json()
    return who


def approve_tier(app: Flask, username: str, tier: int, country: str) -> None:
    kyc = services(app).kyc
    review = kyc.request(username, tier, country)
    assert review["state"] == "pending", review
    kyc.decide("officer1", review["id"], "approve")


def refused(r: TestResponse, status: int, code: int, error: str) -> None:
    assert r.status_code == status, r.get_json()
    body = r.get_json()
    assert body["code"] == code and body["error"] == error, body


def live_orders(app: Flask, name: str) -> int:
    ch = app.extensions["strongroom.exchange"].venue.clearing
    return sum(len(ids) for (acct, _), ids in ch.order_index.items() if acct == name)


def test_trading_tier1_order_over_notional_cap_refused_with_2032(
    app: Flask, clock: Any, market: Trader
) -> None:
    carol = trader(app, clock, "carol", 1, 100_000)  # 3x of 100,000 USD is 300,000: the 25,000 cap binds
    refused(carol.order("big", "buy", 500), 422, 2032, "notional_cap_exceeded")  # 30,000 USD
    assert live_orders(app, "carol") == 0
    r = carol.order("ok", "buy", 400)  # 24,000 USD
    assert r.status_code == 201, r.get_json()
    # The resting order counts: 24,000 + 1,200 is over 25,000 although the second alone is small.
    refused(carol.order("more", "buy", 20), 422, 2032, "notional_cap_exceeded")
    assert live_orders(app, "carol") == 1


def test_trading_tier1_order_over_leverage_cap_refused_with_2033(
    app: Flask, clock: Any, market: Trader
) -> None:
    carol = trader(app, clock, "carol", 1, 5_000)  # 3x: 15,000 USD of exposure
    r = carol.order("x", "buy", 300)  # 18,000 USD
    refused(r, 422, 2033, "leverage_cap_exceeded")
    assert "3x" in r.get_json()["message"] and "KYC tier 1" in r.get_json()["message"]
    assert carol.order("y", "buy", 250).status_code == 201  # 15,000 USD


def test_trading_tier0_user_refused_with_2030(app: Flask, clock: Any, market: Trader) -> None:
    dan = trader(app, clock, "dan", 0, 5_000)
    refused(dan.order("x", "buy", 1), 403, 2030, "trading_not_permitted")


def test_trading_tier_upgrade_raises_the_cap(app: Flask, clock: Any, market: Trader) -> None:
    carol = trader(app, clock, "carol", 1, 100_000)
    refused(carol.order("a", "buy", 1000), 422, 2032, "notional_cap_exceeded")  # 60,000 > 25,000 USD
    approve_tier(app, "carol", 2, "DE")  # tier 2: 1,000,000 USD, 10x of 100,000 USD
    r = carol.order("a", "buy", 1000)
    assert r.status_code == 201, r.get_json()


def test_trading_downgrade_still_lets_the_user_close(app: Flask, clock: Any, market: Trader) -> None:
    carol = trader(app, clock, "carol", 2, 100_000)
    maker = trader(app, clock, "maker", 4, 1_000_000)
    assert maker.order("m1", "sell", 1000).status_code == 201
    assert carol.order("c1", "buy", 1000).status_code == 201  # a long of 60,000 USD
    approve_tier(app, "carol", 1, "DE")  # a downgrade: the 25,000 USD cap is now below the position
    refused(carol.order("c2", "buy", 1), 422, 2032, "notional_cap_exceeded")
    assert maker.order("m2", "buy", 1000).status_code == 201
    r = carol.order("c3", "sell", 1000)  # closing is never refused by the caps
    assert r.status_code == 201, r.get_json()
    assert any(e["type"] == "trade" for e in r.get_json()["events"])


def test_trading_amend_raising_quantity_over_cap_refused(app: Flask, clock: Any, market: Trader) -> None:
    carol = trader(app, clock, "carol", 1, 100_000)
    assert carol.order("a", "buy", 400).status_code == 201
    r = carol.call("PATCH", f"{BASE}/orders/BTC-PERP/a", {"qty": 500})
    refused(r, 422, 2032, "notional_cap_exceeded")
    r = carol.call("PATCH", f"{BASE}/orders/BTC-PERP/a", {"qty": 300})
    assert r.status_code == 200, r.get_json()


def test_trading_concurrent_orders_cannot_jointly_exceed_notional_cap(
    app: Flask, clock: Any, market: Trader
) -> None:
    carol = trader(app, clock, "carol", 1, 100_000)
    # Two resting buys of 18,000 USD each: either fits the 25,000 USD cap, both together do not.
    prepared = [carol.signed("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": f"r{i}", "side": "buy",
                                                        "qty": 300, "price": BTC - i * 100_000})
                for i in range(2)]
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        client = app.test_client()
        barrier.wait(timeout=60)
        results[i] = carol.send(client, "POST", f"{BASE}/orders", *prepared[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201, 422], [r.get_json() for r in results]
    assert next(r for r in results if r.status_code == 422).get_json()["code"] == 2032
    assert live_orders(app, "carol") == 1


def test_trading_gb_resident_refused_derivatives_with_2031(app: Flask, clock: Any, market: Trader) -> None:
    gina = trader(app, clock, "gina", 1, 10_000)
    approve_tier(app, "gina", 2, "GB")
    r = gina.order("x", "buy", 10)
    refused(r, 403, 2031, "product_not_permitted")
    assert "GB" in r.get_json()["message"] and "perpetual" in r.get_json()["message"]


def test_trading_fr_resident_leverage_capped_below_tier(app: Flask, clock: Any, market: Trader) -> None:
    fred = trader(app, clock, "fred", 1, 10_000)
    approve_tier(app, "fred", 2, "FR")  # tier 2 allows 10x, France's rule 2x: 20,000 USD on 10,000
    refused(fred.order("x", "buy", 400), 422, 2033, "leverage_cap_exceeded")  # 24,000 USD
    assert fred.order("y", "buy", 300).status_code == 201  # 18,000 USD


def test_trading_ch_resident_below_required_tier_refused_with_2030(
    app: Flask, clock: Any, market: Trader
) -> None:
    chris = trader(app, clock, "chris", 0, 10_000)
    approve_tier(app, "chris", 1, "CH")  # Switzerland's rule asks tier 2 to trade
    r = chris.order("x", "buy", 10)
    refused(r, 403, 2030, "trading_not_permitted")
    assert "tier 2" in r.get_json()["message"]
    approve_tier(app, "chris", 2, "CH")
    assert chris.order("x", "buy", 10).status_code == 201


def test_kyc_approval_records_the_jurisdiction_and_rules_version(app: Flask, clock: Any) -> None:
    services(app).users.create_user("erin", frozenset({Role.TRADER}), kyc_tier=0)
    approve_tier(app, "erin", 2, "de")
    assert services(app).kyc.standing("erin") == (2, "DE")
    with services(app).sessions() as session:
        from sqlalchemy import select

        from custody.security_log import SecurityEvent

        rows = session.scalars(select(SecurityEvent).where(SecurityEvent.action == "kyc.approve")).all()
    details = json.loads(rows[-1].details) if isinstance(rows[-1].details, str) else rows[-1].details
    assert details["jurisdiction"] == "DE" and details["jurisdiction_rules"] == "strongroom-jurisdictions@1"
