"""Personal settings: per user, validated whole with stable codes, applied by the console pages."""

from __future__ import annotations

import json

from policies.roles import Role
from tests.custody.access.helpers import make_user
from tests.strongroom.console.conftest import LOCAL, csrf_of, logged_in


def _users(console_app, clock):
    client = console_app.test_client()
    alice = make_user(console_app, client, clock, "set-alice", {Role.TRADER})
    bob = make_user(console_app, client, clock, "set-bob", {Role.TRADER})
    return alice, bob


def test_settings_never_saved_read_as_documented_defaults(console_app, clock):
    alice, _ = _users(console_app, clock)
    body = alice.get("/api/v1/settings").get_json()
    assert body["settings"] == {"theme": "dark", "units": "whole", "default_leverage": 10,
                                "default_margin_mode": "cross", "default_order_type": "limit",
                                "candle_interval": "1m",
                                "panels": ["book", "order_entry", "trades", "candles", "depth", "account",
                                           "positions", "open_orders", "fills", "income"]}


def test_settings_partial_update_keeps_other_fields(console_app, clock):
    alice, _ = _users(console_app, clock)
    r = alice.post("/api/v1/settings", json={"theme": "light", "default_leverage": 25})
    assert r.status_code == 200, r.get_json()
    r = alice.post("/api/v1/settings", json={"panels": ["order_entry", "book"]})
    got = alice.get("/api/v1/settings").get_json()["settings"]
    assert (got["theme"], got["default_leverage"], got["panels"]) == ("light", 25, ["order_entry", "book"])


def test_settings_bad_value_refused_with_stable_code_and_nothing_changed(console_app, clock):
    alice, _ = _users(console_app, clock)
    alice.post("/api/v1/settings", json={"theme": "light"})
    bad = [{"theme": "neon"}, {"default_leverage": 0}, {"default_leverage": 101}, {"default_leverage": 2.5},
           {"default_leverage": True}, {"panels": []}, {"panels": ["book", "book"]}, {"panels": ["chat"]},
           {"units": None}, {"candle_interval": "7m"}, {"default_margin_mode": "portfolio"},
           {"theme": "dark", "default_order_type": "iceberg"}]
    for change in bad:
        r = alice.post("/api/v1/settings", json=change)
        assert (r.status_code, r.get_json()["code"], r.get_json()["error"]) == (
            400, 6001, "settings_invalid"), (change, r.get_json())
    # The last one was refused whole: its valid theme=dark did not apply either.
    assert alice.get("/api/v1/settings").get_json()["settings"]["theme"] == "light"


def test_settings_unknown_field_refused_so_nobody_names_another_user(console_app, clock):
    alice, bob = _users(console_app, clock)
    r = alice.post("/api/v1/settings", json={"username": "set-bob", "theme": "light"})
    assert (r.status_code, r.get_json()["code"], r.get_json()["error"]) == (
        400, 6002, "settings_field_unknown")
    r = alice.post("/api/v1/settings", data="[1]", content_type="application/json")
    assert r.status_code == 400
    assert bob.get("/api/v1/settings").get_json()["settings"]["theme"] == "dark"


def test_settings_one_user_cannot_read_or_write_another_users(console_app, clock):
    alice, bob = _users(console_app, clock)
    assert alice.post("/api/v1/settings", json={"theme": "light", "default_leverage": 3}).status_code == 200
    assert bob.post("/api/v1/settings", json={"units": "minor"}).status_code == 200
    a = alice.get("/api/v1/settings").get_json()["settings"]
    b = bob.get("/api/v1/settings").get_json()["settings"]
    assert (a["theme"], a["default_leverage"], a["units"]) == ("light", 3, "whole")
    assert (b["theme"], b["default_leverage"], b["units"]) == ("dark", 10, "minor")
    # There is no path or query naming a user: those requests do not reach anyone's settings.
    assert alice.get("/api/v1/settings/set-bob").status_code == 404
    r = alice.get("/api/v1/settings", query={"username": "set-bob"})
    assert r.get_json()["settings"]["default_leverage"] == 3


def test_settings_unsigned_request_refused(console_app):
    r = console_app.test_client().get("/api/v1/settings")
    assert r.status_code == 401


def test_console_settings_page_saves_and_trade_page_applies_them(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    page = client.get("/console/settings", base_url=LOCAL).get_data(as_text=True)
    assert 'data-theme="dark"' in page
    form = {"csrf_token": csrf_of(page), "theme": "light", "units": "minor", "default_leverage": "7",
            "default_margin_mode": "isolated", "default_order_type": "market", "candle_interval": "1h",
            "panels": ["order_entry", "positions", "candles"]}
    saved = client.post("/console/settings", base_url=LOCAL, data=form)
    assert saved.status_code == 303
    page = client.get("/console/settings", base_url=LOCAL).get_data(as_text=True)
    assert "settings saved" in page and 'data-theme="light"' in page
    trade = client.get("/console/trade?symbol=BTC-PERP", base_url=LOCAL).get_data(as_text=True)
    assert '<option value="market" selected>' in trade
    assert '<option value="isolated" selected>' in trade
    assert 'data-interval="1h"' in trade and 'id="candle-chart"' in trade
    assert 'id="book-card"' not in trade and 'id="fills"' not in trade  # hidden panels
    assert 'id="open-orders"' not in trade and 'id="positions"' in trade


def test_console_settings_refusal_shows_api_code_and_keeps_old(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    page = client.get("/console/settings", base_url=LOCAL).get_data(as_text=True)
    form = {"csrf_token": csrf_of(page), "theme": "light", "units": "whole", "default_leverage": "500",
            "default_margin_mode": "cross", "default_order_type": "limit", "candle_interval": "1m",
            "panels": ["book"]}
    client.post("/console/settings", base_url=LOCAL, data=form)
    page = client.get("/console/settings", base_url=LOCAL).get_data(as_text=True)
    assert "6001 settings_invalid" in page and 'data-theme="dark"' in page


def test_console_minor_units_setting_changes_displayed_amounts(console_app, people, clock):
    from strongroom.console.preferences import Settings
    from strongroom.console.web import units

    with console_app.test_request_context("/console/wallet"):
        from flask import g

        g.preferences = Settings(units="minor")
        assert units("USDC", 1_500_000) == "1500000"
        assert units("USDC", 1_500_000, for_input=True) == "1.500000"
        g.preferences = Settings()
        assert units("USDC", 1_500_000) == "1.500000"
    assert json.loads(json.dumps(Settings().to_json()))["units"] == "whole"


def test_settings_doc_example_is_accepted_and_answered_as_documented(console_app, clock):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "console.md").read_text()
    (example,) = re.findall(r"```json example:settings\n(.*?)```", doc, re.S)
    documented = json.loads(example)["settings"]
    alice, _ = _users(console_app, clock)
    r = alice.post("/api/v1/settings", json=documented)
    assert r.status_code == 200 and r.get_json()["settings"] == documented
