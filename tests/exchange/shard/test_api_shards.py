"""Several clearing shards behind one API: routing by instrument, one collateral pool per shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from shard_api_helpers import (
    BASE,
    BTC,
    USDC,
    Trader,
    close,
    fund,
    mark,
    stream_bodies,
    two_shard_app,
)

from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.stream.cluster import LocalCluster
from exchange.stream.shard.gateway import parse_shards, shard_configs
from exchange.stream.shard.wire import command_decoder
from policies.roles import Role

CONFIG = load_instruments(DEFAULT_CONFIG)
ETH = 3_000 * USDC


def test_shard_configs_default_is_one_main_shard_with_the_whole_config() -> None:
    assert shard_configs(CONFIG) == {"MAIN": CONFIG}
    assert shard_configs(CONFIG, {}) == {"MAIN": CONFIG}


def test_shard_configs_split_by_symbols_keeps_each_shards_instruments_and_calendar() -> None:
    btc = [s for s, i in CONFIG.instruments.items() if i.underlying == "BTC"]
    eth = [s for s, i in CONFIG.instruments.items() if i.underlying == "ETH"]
    configs = shard_configs(CONFIG, {"A": btc, "B": eth})
    assert sorted(configs["A"].instruments) == sorted(btc)
    assert sorted(configs["B"].instruments) == sorted(eth)
    assert set(configs["B"].calendar) <= {"ETH"}


@pytest.mark.parametrize("shards, why", [
    ({"A": ["BTC-PERP"], "B": ["BTC-PERP", "ETH-PERP"]}, "is in shards"),
    ({"A": ["BTC-PERP"]}, "in no shard"),
    ({"A": ["NOPE-PERP"]}, "not listed"),
    ({"a b": ["BTC-PERP"]}, "must match"),
    ({"A": []}, "lists no instruments"),
])
def test_shard_configs_inconsistent_split_refused(shards: dict[str, list[str]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        shard_configs(CONFIG, shards)


def test_shard_configs_instrument_file_per_shard_loads_like_the_worker(tmp_path: Path) -> None:
    parsed = parse_shards(f"MAIN={DEFAULT_CONFIG}, ALT={DEFAULT_CONFIG}")
    assert parsed == {"MAIN": str(DEFAULT_CONFIG), "ALT": str(DEFAULT_CONFIG)}
    with pytest.raises(ValueError, match="is in shards"):  # both files list every instrument
        shard_configs(CONFIG, parsed)
    assert shard_configs(CONFIG, {"MAIN": str(DEFAULT_CONFIG)}) == {"MAIN": load_instruments(DEFAULT_CONFIG)}
    for bad in ("MAIN", "MAIN=", "bad name=x.toml"):
        with pytest.raises(ValueError):
            parse_shards(bad)


def test_shard_api_two_shards_route_by_instrument_and_keep_separate_pools(
        nats_cluster: LocalCluster, postgres_url: str, clock: Any, keystore: Any,
        tmp_path: Path) -> None:
    app, btc_shard, eth_shard = two_shard_app(nats_cluster.urls, postgres_url, clock, keystore,
                                              tmp_path / "data")
    try:
        ops = Trader(app, clock, "ops", tier=0, roles=frozenset({Role.ADMIN}))
        mark(ops, "BTC", BTC)
        mark(ops, "ETH", ETH)
        alice = Trader(app, clock, "alice")
        fund(app, btc_shard, "alice", 10_000 * USDC, clock.now_ms)
        assert alice.order("b1", "buy", 1, BTC - 100_000).status_code == 201
        # The BTC shard's collateral does not back an ETH order: each shard is its own pool.
        r = alice.order("e1", "buy", 1, ETH - 1_000_000, symbol="ETH-PERP")
        assert r.status_code in (404, 422) and r.get_json()["code"] in (2001, 2005), r.get_json()
        fund(app, eth_shard, "alice", 1_000 * USDC, clock.now_ms)
        r = alice.order("e1", "buy", 1, ETH - 1_000_000, symbol="ETH-PERP")
        assert r.status_code == 201, r.get_json()
        orders = alice.call("GET", f"{BASE}/orders").get_json()["orders"]
        assert sorted((o["symbol"], o["id"]) for o in orders) == [("BTC-PERP", "b1"), ("ETH-PERP", "e1")]
        main = alice.call("GET", f"{BASE}/account", query=f"shard={btc_shard}").get_json()
        other = alice.call("GET", f"{BASE}/account", query=f"shard={eth_shard}").get_json()
        assert (main["collateral"], other["collateral"]) == (10_000 * USDC, 1_000 * USDC)
        r = alice.call("GET", f"{BASE}/account", query="shard=NOPE")
        assert r.status_code == 404, r.get_json()
        symbols = {shard: {getattr(command_decoder.decode(b).cmd, "symbol", None)
                           for b in stream_bodies(nats_cluster.urls, shard)} - {None}
                   for shard in (btc_shard, eth_shard)}
        assert symbols[btc_shard] == {"BTC-PERP"} and symbols[eth_shard] == {"ETH-PERP"}, symbols
    finally:
        close(app)
