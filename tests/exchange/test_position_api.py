"""Position margin over the API: isolated margin in and out, leverage, TP/SL (issue 14)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from .test_api import BASE, BTC, USDC, _setup


def test_isolated_margin_leverage_and_tpsl_through_the_api(app: Flask, client: FlaskClient,
                                                            clock: Any) -> None:
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        assert who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC}).status_code == 200
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/leverage", {"leverage": 10, "margin_mode": "isolated"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"symbol": "BTC-PERP", "leverage": 10, "margin_mode": "isolated"}
    order = {"symbol": "BTC-PERP", "side": "sell", "qty": 100, "price": BTC}
    assert bob.call("POST", f"{BASE}/orders", {**order, "id": "s1"}).status_code == 201
    r = alice.call("POST", f"{BASE}/orders", {**order, "id": "b1", "side": "buy", "margin_mode": "isolated"})
    assert r.status_code == 201, r.get_json()
    summary = alice.call("GET", f"{BASE}/account").get_json()
    iso = summary["isolated"][0]
    assert iso["position_margin"] == 600 * USDC  # 10x on 6,000 USDC of notional
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/isolated-margin/add", {"amount": 100 * USDC})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["isolated"][0]["collateral"] == iso["collateral"] + 100 * USDC
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/isolated-margin/remove", {"amount": 10_000 * USDC})
    assert r.status_code == 422 and r.get_json()["code"] == 2014
    assert r.get_json()["error"] == "position_margin_locked"
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/isolated-margin/sideways", {"amount": 1})
    assert r.status_code == 404
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/leverage", {"leverage": 0})
    assert r.status_code == 400 and r.get_json()["code"] == 2013
    r = alice.call("POST", f"{BASE}/positions/NOPE/leverage", {"leverage": 5})
    assert r.status_code == 404
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/tpsl",
                   {"take_profit": BTC - 100 * USDC, "margin_mode": "isolated"})
    assert r.status_code == 400 and "above the mark" in r.get_json()["message"]
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/tpsl",
                   {"take_profit": BTC + 1_000 * USDC, "stop_loss": BTC - 1_000 * USDC,
                    "margin_mode": "isolated"})
    assert r.status_code == 200, r.get_json()
    r = alice.call("POST", f"{BASE}/positions/BTC-PERP/tpsl", {"bogus": 1})
    assert r.status_code == 400
