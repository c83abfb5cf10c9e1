"""The worked examples of docs/margin.md are computed by the code, as written.

Every fenced block tagged ``example <kind>`` is parsed (``key: value`` lines)
and recomputed; a formula change that is not reflected in the document fails
here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exchange.engine.messages import NewOrder
from exchange.instruments import PPM, load_instruments
from exchange.margin.requirement import linear_margin, option_seller_margin
from exchange.prices import Twap
from exchange.risk.clearing import adl_score
from exchange.venue import Venue

DOC = Path(__file__).resolve().parents[2] / "docs" / "margin.md"
BLOCK = re.compile(r"```example (\w+)\n(.*?)```", re.S)
NOW = 1_767_225_600_000


def examples() -> list[tuple[str, dict[str, str]]]:
    out = []
    for kind, body in BLOCK.findall(DOC.read_text()):
        fields = dict(line.split(": ", 1) for line in body.strip().splitlines())
        out.append((kind, fields))
    return out


def test_margin_doc_has_an_example_of_every_kind() -> None:
    kinds = {kind for kind, _ in examples()}
    assert kinds == {"linear_margin", "option_seller_margin", "pre_trade", "settlement_twap", "adl_score"}


@pytest.mark.parametrize(("kind", "f"), examples(), ids=lambda x: x if isinstance(x, str) else "")
def test_margin_doc_example_matches_the_code(kind: str, f: dict[str, str]) -> None:
    config = load_instruments()
    n = {k: int(v) for k, v in f.items() if re.fullmatch(r"-?\d+", v)}
    if kind == "linear_margin":
        spec = config.instruments[f["symbol"]]
        rate = -(-PPM // n["leverage"]) if n["leverage"] else 0
        assert linear_margin(spec, n["size"], n["mark"], rate) == (n["im"], n["mm"])
    elif kind == "option_seller_margin":
        spec = config.instruments[f["symbol"]]
        assert option_seller_margin(spec, n["size"], n["mark"], n["index"]) == (n["im"], n["mm"])
    elif kind == "settlement_twap":
        twap = Twap(n["window_start_ms"], n["expiry_ms"])
        for pair in f["samples"].split():
            ts, price = pair.split("=")
            twap.sample(int(ts), int(price))
        assert twap.price(n["hold_ms"]) == n["price"]
    elif kind == "adl_score":
        assert adl_score(n["pnl"], n["cost"], n["notional"], n["equity"]) == n["score"]
    else:
        assert kind == "pre_trade"
        v = Venue(config)
        v.deposit("x", n["deposit"])
        for source in config.indices["BTC"].sources:
            v.quote("BTC", source, n["mark"], NOW)
        v.tick("BTC", NOW)
        order = NewOrder(id="o", account="x", side=f["side"], qty=n["qty"], price=n["price"])  # type: ignore[arg-type]
        assert v.place("BTC-PERP", order).code == 0
        assert v.clearing.orders[("BTC-PERP", "o")].im == n["reserve"]
