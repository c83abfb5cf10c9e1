"""The options chain page: listed options grouped by underlying and expiry, calls and puts by strike."""

from __future__ import annotations

import re

from strongroom.console.views import option_chains
from tests.strongroom.console.conftest import LOCAL, logged_in
from tests.strongroom.console.test_console_actions import _page


def test_options_chain_lists_every_listed_option_by_strike(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/options")
    public = console_app.test_client().get("/api/v1/market/instruments", base_url=LOCAL)
    listed = public.get_json()["instruments"]
    options = [i for i in listed if i["kind"] == "option"]
    assert options, "the reference instruments list options"
    for o in options:
        assert f'href="/console/trade?symbol={o["symbol"]}"' in html
    strikes = re.findall(r'<tr data-strike="([0-9.]+)">', html)
    assert len(strikes) == len({(o["underlying"], o["expiry_ms"], o["strike"]) for o in options})
    assert 'href="/console/options"' in html  # in the trader's navigation


def test_options_chain_pairs_call_and_put_and_sorts_strikes_numerically():
    def option(symbol, kind, strike):
        return {"symbol": symbol, "kind": "option", "underlying": "BTC", "expiry_ms": 5, "strike": strike,
                "option_type": kind, "mark": "1.0", "open_interest": "0.000"}

    chains = option_chains([option("C9", "call", "9000.0"), option("P10", "put", "10000.0"),
                            option("C10", "call", "10000.0"),
                            {"symbol": "BTC-PERP", "kind": "perpetual"}], {})
    (chain,) = chains
    assert [r["strike"] for r in chain["strikes"]] == ["9000.0", "10000.0"]  # not string order
    assert chain["strikes"][1]["call"]["symbol"] == "C10" and chain["strikes"][1]["put"]["symbol"] == "P10"
    assert "put" not in chain["strikes"][0]


def test_options_chain_refused_to_non_traders(console_app, people, clock):
    client = logged_in(console_app, people["auditor"], clock)
    assert client.get("/console/options", base_url=LOCAL).status_code == 403
