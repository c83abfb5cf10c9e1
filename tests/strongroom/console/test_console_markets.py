"""Markets on and off from the console: the admin control API's own checks, as the logged-in admin."""

from __future__ import annotations

import html as html_text
import re

import pytest

from tests.strongroom.console.conftest import LOCAL, csrf_of, logged_in
from tests.strongroom.console.test_console_actions import _fund, _page, _post
from tests.strongroom.console.test_console_actions import notices as escaped_notices


def notices(html: str) -> list[str]:
    return [html_text.unescape(n) for n in escaped_notices(html)]


def _mode(html: str, symbol: str) -> str:
    found = re.search(rf'<tr data-symbol="{symbol}" data-mode="([a-z_]+)"', html)
    assert found, f"{symbol} is not on the markets page"
    return found.group(1)


def _next_code(person, clock) -> str:
    """Return a fresh TOTP code: each step is good once and in order, so move the clock a step on."""
    clock.advance(30_000)
    return person.totp.at(clock() // 1000)


def _public_status(console_app, symbol: str) -> str:
    answer = console_app.test_client().get("/api/v1/market/instruments", base_url=LOCAL).get_json()
    return next(i["status"] for i in answer["instruments"] if i["symbol"] == symbol)


def test_admin_halts_market_then_trader_order_refused_and_reopens(console_app, people, clock):
    _fund(console_app, "alice")
    admin = logged_in(console_app, people["admin"], clock)
    html = _page(admin, "/console/markets")
    assert _mode(html, "BTC-PERP") == "open"
    html = _post(admin, "/console/markets/BTC-PERP/status", html, mode="halted", reason="incident 42",
                 minutes="", code=_next_code(people["admin"], clock))
    assert "BTC-PERP is now halted" in html, notices(html)
    assert _mode(html, "BTC-PERP") == "halted" and "incident 42" in html
    assert _public_status(console_app, "BTC-PERP") == "halted"

    trader = logged_in(console_app, people["alice"], clock)
    page = _page(trader, "/console/trade?symbol=BTC-PERP")
    page = _post(trader, "/console/trade/collateral", page, direction="deposit", amount="10000",
                 symbol="BTC-PERP")
    page = _post(trader, "/console/trade/orders", page, symbol="BTC-PERP", id="h1", side="buy",
                 type="limit", qty="1", price="58000", tif="GTC", margin_mode="cross")
    assert "2021" in " ".join(notices(page)), notices(page)
    assert 'data-order-id="h1"' not in page

    html = _post(admin, "/console/markets/BTC-PERP/status", _page(admin, "/console/markets"), mode="open",
                 reason="", code=_next_code(people["admin"], clock))
    assert "BTC-PERP is now open" in html, notices(html)
    assert _mode(html, "BTC-PERP") == "open" and _public_status(console_app, "BTC-PERP") == "open"
    page = _post(trader, "/console/trade/orders", page, symbol="BTC-PERP", id="h2", side="buy",
                 type="limit", qty="1", price="58000", tif="GTC", margin_mode="cross")
    assert "order h2 placed" in page, notices(page)


def test_market_halt_for_minutes_ends_on_its_own(console_app, people, clock):
    admin = logged_in(console_app, people["admin"], clock)
    html = _post(admin, "/console/markets/ETH-PERP/status", _page(admin, "/console/markets"),
                 mode="cancel_only", reason="maintenance", minutes="5",
                 code=_next_code(people["admin"], clock))
    assert "ETH-PERP is now cancel-only until" in html, notices(html)
    assert _mode(html, "ETH-PERP") == "cancel_only"
    clock.advance(5 * 60_000)
    assert _mode(_page(admin, "/console/markets"), "ETH-PERP") == "open"


def test_market_halt_with_wrong_totp_refused_nothing_changed(console_app, people, clock):
    admin = logged_in(console_app, people["admin"], clock)
    html = _post(admin, "/console/markets/BTC-PERP/status", _page(admin, "/console/markets"),
                 mode="halted", reason="", code="000000")
    assert any("mfa" in n.lower() for n in notices(html)), notices(html)
    assert _mode(html, "BTC-PERP") == "open" and _public_status(console_app, "BTC-PERP") == "open"


@pytest.mark.parametrize(("form", "says"), [
    ({"mode": "closed"}, "mode was 'closed'"),
    ({"mode": "halted", "minutes": "-3"}, "duration was '-3'"),
    ({"mode": "halted", "minutes": "99999999"}, "duration was"),
])
def test_market_status_form_with_bad_input_refused_before_the_api(console_app, people, clock, form, says):
    admin = logged_in(console_app, people["admin"], clock)
    html = _post(admin, "/console/markets/BTC-PERP/status", _page(admin, "/console/markets"),
                 code=_next_code(people["admin"], clock), **form)
    assert any(says in n for n in notices(html)), notices(html)
    assert _mode(html, "BTC-PERP") == "open"


def test_market_unknown_symbol_refused_with_api_code(console_app, people, clock):
    admin = logged_in(console_app, people["admin"], clock)
    html = _post(admin, "/console/markets/NOPE-PERP/status", _page(admin, "/console/markets"),
                 mode="halted", code=_next_code(people["admin"], clock))
    assert any("not listed" in n for n in notices(html)), notices(html)


def test_admin_sets_and_removes_circuit_breaker(console_app, people, clock):
    admin = logged_in(console_app, people["admin"], clock)
    html = _post(admin, "/console/markets/BTC-PERP/breaker", _page(admin, "/console/markets"),
                 max_move_bps="1000", window_ms="300000", cooldown_ms="120000",
                 code=_next_code(people["admin"], clock))
    assert "circuit breaker at 1000 bps over 300000 ms" in html, notices(html)
    assert "1000 bps / 300000 ms, cooldown 120000 ms" in html
    html = _post(admin, "/console/markets/BTC-PERP/breaker", html, max_move_bps="0", window_ms="",
                 cooldown_ms="", code=_next_code(people["admin"], clock))
    assert "BTC-PERP: circuit breaker removed" in html, notices(html)
    html = _post(admin, "/console/markets/BTC-PERP/breaker", html, max_move_bps="1e3",
                 code=_next_code(people["admin"], clock))
    assert any("max_move_bps was '1e3'" in n for n in notices(html)), notices(html)


@pytest.mark.parametrize("username", ["alice", "treasury1", "auditor"])
def test_markets_page_and_actions_refused_to_other_roles(console_app, people, clock, username):
    client = logged_in(console_app, people[username], clock)
    home = client.get("/console/keys" if username != "auditor" else "/console/audit", base_url=LOCAL)
    html = home.get_data(as_text=True)
    assert "/console/markets" not in html  # not in their navigation
    assert client.get("/console/markets", base_url=LOCAL).status_code == 403
    refused = client.post("/console/markets/BTC-PERP/status", base_url=LOCAL, data={
        "csrf_token": csrf_of(html), "mode": "halted", "code": _next_code(people[username], clock)})
    assert refused.status_code == 403
    assert _public_status(console_app, "BTC-PERP") == "open"


def test_markets_page_in_admin_navigation(console_app, people, clock):
    admin = logged_in(console_app, people["admin"], clock)
    assert 'href="/console/markets"' in _page(admin, "/console/admin")
