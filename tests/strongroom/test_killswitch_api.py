"""Exchange kill switches through the signed API: halt / cancel-only, breaker, dead man's switch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from custody.security_log import SecurityEvent
from policies.roles import Role
from tests.conftest import fresh_database_url
from tests.custody.access.helpers import SignedClient, make_user
from tests.exchange.test_api import BASE, BTC, USDC, Caller, _setup


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, "sqlite", tmp_path)


@pytest.fixture
def traders(app: Flask, client: FlaskClient, clock: Any, admin: SignedClient) -> tuple[Caller, Caller]:
    # After the admin: enrolling MFA moves the clock, which would leave the index stale.
    _, alice, bob = _setup(app, client, clock)
    for who in (alice, bob):
        assert who.call("POST", f"{BASE}/collateral/deposit", {"amount": 5_000 * USDC}).status_code == 200
    return alice, bob


@pytest.fixture
def admin(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "opsadmin", {Role.ADMIN})


def _order(who: Caller, oid: str, side: str = "buy", price: int = BTC - 100 * USDC) -> Any:
    return who.call("POST", f"{BASE}/orders", {"symbol": "BTC-PERP", "id": oid, "side": side, "qty": 10,
                                               "price": price})


def _fresh_index(admin: SignedClient) -> None:
    for source in ("coinbase", "kraken", "bitstamp"):
        r = admin.post(f"{BASE}/operator/quotes", json={"underlying": "BTC", "source": source, "price": BTC})
        assert r.status_code == 200, r.json


def _status(admin: SignedClient, mode: str, **extra: Any) -> Any:
    return admin.post(f"{BASE}/admin/markets/BTC-PERP/status", json={"mode": mode, **extra}, mfa=True)


def test_admin_halts_market_orders_and_cancels_get_409_then_reopens(
    app: Flask, traders: tuple[Caller, Caller], admin: SignedClient
) -> None:
    alice, _ = traders
    assert _order(alice, "a1").status_code == 201
    r = _status(admin, "halted", reason="incident 9")
    assert r.status_code == 200 and r.json["mode"] == "halted", r.json
    r = _order(alice, "a2")
    assert (r.status_code, r.get_json()["code"], r.get_json()["error"]) == (409, 2021, "market_halted")
    r = alice.call("DELETE", f"{BASE}/orders/BTC-PERP/a1")
    assert (r.status_code, r.get_json()["code"]) == (409, 2021)
    r = _status(admin, "cancel_only")
    assert _order(alice, "a3").get_json()["code"] == 2022
    assert alice.call("DELETE", f"{BASE}/orders/BTC-PERP/a1").status_code == 200
    _status(admin, "open")
    _fresh_index(admin)  # MFA codes move the test clock past the index staleness window
    r = _order(alice, "a4")
    assert r.status_code == 201, r.get_json()
    markets = admin.get(f"{BASE}/admin/markets").json["markets"]
    assert {m["symbol"]: m["mode"] for m in markets}["BTC-PERP"] == "open"
    with app.extensions["strongroom.sessions"]() as session:
        logged = [(e.action, e.subject) for e in session.scalars(select(SecurityEvent))]
    assert logged.count(("market.status", "BTC-PERP")) == 3


def test_trader_cannot_halt_a_market(traders: tuple[Caller, Caller]) -> None:
    alice, _ = traders
    r = alice.call("POST", f"{BASE}/admin/markets/BTC-PERP/status", {"mode": "halted"})
    assert r.status_code == 403
    assert _order(alice, "a1").status_code == 201


def test_market_status_with_bad_mode_is_refused(traders: tuple[Caller, Caller], admin: SignedClient) -> None:
    r = _status(admin, "frozen")
    assert r.status_code == 400 and r.json["code"] == 2023
    assert _status(admin, "halted").status_code == 200
    assert admin.post(f"{BASE}/admin/markets/NOPE-PERP/status", json={"mode": "halted"},
                      mfa=True).status_code == 404


def test_breaker_configured_through_the_api_is_listed(
    traders: tuple[Caller, Caller], admin: SignedClient
) -> None:
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/breaker",
                   json={"max_move_bps": 500, "window_ms": 60_000, "cooldown_ms": 30_000}, mfa=True)
    assert r.status_code == 200 and r.json["breaker"]["max_move_bps"] == 500, r.json
    r = admin.post(f"{BASE}/admin/markets/BTC-PERP/breaker", json={"max_move_bps": 500}, mfa=True)
    assert r.status_code == 400 and r.json["error"] == "invalid_control"


def test_deadman_switch_cancels_the_callers_orders_after_timeout(
    app: Flask, traders: tuple[Caller, Caller], clock: Any
) -> None:
    alice, bob = traders
    assert _order(alice, "a1").status_code == 201
    assert _order(bob, "b1").status_code == 201
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 5_000})
    assert r.status_code == 200 and r.get_json()["deadline_ms"] > 0
    clock.advance(4_000)
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 5_000})  # re-armed in time
    clock.advance(4_000)
    assert [o["id"] for o in alice.call("GET", f"{BASE}/orders").get_json()["orders"]] == ["a1"]
    clock.advance(2_000)
    # Any later command first runs what is due: the switch fires before it, so no order of
    # alice's can trade after her deadline.
    bob.call("DELETE", f"{BASE}/orders/BTC-PERP/nope")
    assert alice.call("GET", f"{BASE}/orders").get_json()["orders"] == []
    assert [o["id"] for o in bob.call("GET", f"{BASE}/orders").get_json()["orders"]] == ["b1"]


def test_deadman_with_bad_timeout_is_refused(traders: tuple[Caller, Caller]) -> None:
    alice, _ = traders
    r = alice.call("POST", f"{BASE}/deadman", {"timeout_ms": 10})
    assert r.status_code == 400 and r.get_json()["code"] == 2023


def test_websocket_cancel_on_disconnect_cancels_the_users_orders_when_the_session_closes() -> None:
    import json as json_module
    import tempfile
    import time as time_module

    from websockets.sync.client import connect

    from tests.exchange.test_stream import Stack, recv

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srk") as directory:
        s = Stack(Path(directory))
        try:
            svc = _VenueService(s)
            s.feed.on_disconnect = lambda user: _cancel(svc, user)
            s.order("alice@x", "buy", 10, price=BTC - 100 * USDC)
            s.order("bob@x", "buy", 10, price=BTC - 100 * USDC)
            token, _ = s.feed.issue_token("alice@x", ["trader"], int(time_module.time() * 1000))
            time_module.sleep(0.1)
            with connect(s.url) as ws:
                ws.send(json_module.dumps({"op": "cancel_on_disconnect", "id": 1}))
                assert recv(ws)["error"] == "unauthenticated"
                ws.send(json_module.dumps({"op": "auth", "id": 2, "token": token}))
                assert recv(ws)["type"] == "authenticated"
                ws.send(json_module.dumps({"op": "cancel_on_disconnect", "id": 3, "enabled": True}))
                assert recv(ws) == {"type": "cancel_on_disconnect", "id": 3, "enabled": True}
                assert _owners(s, svc) == {"alice@x", "bob@x"}
            deadline = time_module.monotonic() + 5
            while "alice@x" in _owners(s, svc):
                assert time_module.monotonic() < deadline, "alice's orders outlived her session"
                time_module.sleep(0.02)
            assert _owners(s, svc) == {"bob@x"}
        finally:
            s.close()


class _VenueService:
    """The shell's lock-and-command shape around the stack's bare venue."""

    def __init__(self, stack: Any) -> None:
        import threading
        from contextlib import contextmanager

        self.venue = stack.venue
        self.lock = threading.RLock()

        @contextmanager
        def command() -> Iterator[Any]:
            with self.lock:
                yield self.venue
                self.venue.drain()

        self.command = command


def _cancel(svc: Any, user: str) -> None:
    from exchange.api.controls import cancel_everywhere

    cancel_everywhere(svc, user)


def _owners(s: Any, svc: Any) -> set[str]:
    with svc.lock:  # the feed thread cancels under the same lock
        return {o.account for o in s.venue.books["BTC-PERP"].orders.values()}
