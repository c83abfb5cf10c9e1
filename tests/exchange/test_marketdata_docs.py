"""docs/market-data.md: every example parses and has the shape the server answers with."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from .test_marketdata_api import EX, MD, Caller, get, market  # noqa: F401  (market: a fixture)

DOC = Path(__file__).resolve().parents[2] / "docs" / "market-data.md"
EXAMPLE = re.compile(r"```json example:([a-z-]+)\n(.*?)```", re.S)
DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def examples() -> dict[str, Any]:
    """Return the documented examples by name (each must be valid JSON)."""
    return {name: json.loads(body) for name, body in EXAMPLE.findall(DOC.read_text())}


def same_shape(documented: Any, served: Any, where: str = "$") -> None:
    """Assert the same keys and JSON types (null matches anything; lists by their first item)."""
    if documented is None or served is None:
        return
    if isinstance(documented, dict):
        assert isinstance(served, dict), where
        assert set(documented) == set(served), f"{where}: {sorted(set(documented) ^ set(served))}"
        for key in documented:
            same_shape(documented[key], served[key], f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(served, list), where
        if documented and served:
            same_shape(documented[0], served[0], f"{where}[0]")
    else:
        assert type(documented) is type(served), f"{where}: {documented!r} vs {served!r}"
        if isinstance(documented, str) and DECIMAL.match(documented):
            assert DECIMAL.match(served), f"{where}: {served!r} is not a decimal string"


def test_market_data_doc_examples_parse() -> None:
    found = examples()
    assert {"depth", "trades", "candles", "ticker", "instruments", "mark", "open-interest", "insurance",
            "order", "trade-history", "income", "position-history"} <= set(found)


def test_market_data_doc_examples_match_the_served_answers(
        client: FlaskClient, market: tuple[Caller, Caller]) -> None:  # noqa: F811
    _, bob = market
    found = examples()
    public = {
        "depth": ("/depth", {"symbol": "BTC-PERP", "limit": 5}),
        "trades": ("/trades", {"symbol": "BTC-PERP"}),
        "candles": ("/candles", {"symbol": "BTC-PERP", "interval": "1m"}),
        "ticker": ("/ticker", {"symbol": "BTC-PERP"}),
        "instruments": ("/instruments", {}),
        "mark": ("/mark", {"symbol": "BTC-PERP"}),
        "open-interest": ("/open-interest", {"symbol": "BTC-PERP"}),
        "insurance": ("/insurance", {}),
    }
    for name, (path, query) in public.items():
        r = get(client, MD + path, **query)
        assert r.status_code == 200, (name, r.get_json())
        same_shape(found[name], r.get_json(), name)
    private = {"order": "/orders/BTC-PERP/b1", "trade-history": "/trade-history", "income": "/income",
               "position-history": "/position-history"}
    for name, path in private.items():
        r = bob.call("GET", EX + path)
        assert r.status_code == 200, (name, r.get_json())
        same_shape(found[name], r.get_json(), name)
