"""The wallets API over two chains: a ``chain`` parameter picks the runtime (ethereum by default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from custody.chains.ethereum.devchain import EmbeddedChain
from custody.keystore import LocalKeystore
from policies.roles import Role

from ..access.helpers import SignedClient, make_user
from ..bitcoin.helpers import BtcHarness, make_btc_harness
from .helpers import Harness, make_harness


@pytest.fixture
def chains(database_url: str, keystore: LocalKeystore, clock: Any) -> tuple[Harness, BtcHarness]:
    return make_harness(EmbeddedChain(), database_url, keystore, clock), make_btc_harness(
        database_url, keystore, clock
    )


@pytest.fixture
def two_chain_app(
    database_url: str, keystore: LocalKeystore, clock: Any, tmp_path: Path, chains: tuple[Harness, BtcHarness]
) -> Iterator[Flask]:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    eth, btc = chains
    app = create_app(
        {
            "TESTING": True,
            "CLOCK": clock,
            "KEYSTORE": keystore,
            "CHAIN_RUNTIMES": {"ethereum": eth.runtime, "bitcoin": btc.runtime},
        },
        settings=Settings(data_dir=tmp_path / "data", database_url=database_url),
    )
    yield app
    app.extensions["strongroom.engine"].dispose()


@pytest.fixture
def treasurer(two_chain_app: Flask, clock: Any) -> SignedClient:
    client = two_chain_app.test_client()
    return make_user(two_chain_app, client, clock, "tara", {Role.TREASURY}, approver=True)


def test_reconciliation_runs_on_the_chain_asked_for_and_ethereum_by_default(treasurer: SignedClient) -> None:
    bitcoin = treasurer.post("/api/v1/wallets/reconciliation", query={"chain": "bitcoin"})
    assert bitcoin.status_code == 201, bitcoin.json
    assert bitcoin.json["chain"] == "bitcoin" and bitcoin.json["status"] == "ok"
    assert {line["asset"] for line in bitcoin.json["lines"]} == {"BTC"}
    ethereum = treasurer.post("/api/v1/wallets/reconciliation")
    assert ethereum.status_code == 201 and ethereum.json["chain"] == "ethereum"
    latest = treasurer.get("/api/v1/wallets/reconciliation/latest", query={"chain": "bitcoin"})
    assert latest.status_code == 200 and latest.json["id"] == bitcoin.json["id"]
    assert treasurer.get("/api/v1/wallets/reconciliation/latest").json["id"] == ethereum.json["id"]


def test_an_unknown_chain_name_is_the_callers_mistake_400(treasurer: SignedClient) -> None:
    answer = treasurer.post("/api/v1/wallets/reconciliation", query={"chain": "litecoin"})
    assert answer.status_code == 400
    assert answer.json["error"] == "invalid_field" and "bitcoin" in answer.json["message"]
    bad = treasurer.get("/api/v1/wallets/reconciliation/latest", query={"chain": "no such chain"})
    assert bad.status_code == 400


def test_lists_filter_by_chain_and_a_bitcoin_refill_is_approved_on_its_own_chain(
    two_chain_app: Flask, clock: Any, treasurer: SignedClient, chains: tuple[Harness, BtcHarness]
) -> None:
    _, btc = chains
    wallets = treasurer.get("/api/v1/wallets", query={"chain": "bitcoin"}).json["wallets"]
    assert {w["name"] for w in wallets} == {"bitcoin-hot", "bitcoin-deposits", "bitcoin-cold"}
    assert len(treasurer.get("/api/v1/wallets").json["wallets"]) == 6
    refill = btc.runtime.treasury.propose_refill("BTC", 50_000, "system.treasury")
    listed = treasurer.get("/api/v1/wallets/refills", query={"chain": "bitcoin"}).json["refills"]
    assert [(r["id"], r["chain"]) for r in listed] == [(refill.id, "bitcoin")]
    assert treasurer.get("/api/v1/wallets/refills", query={"chain": "ethereum"}).json["refills"] == []
    answer = treasurer.post(
        f"/api/v1/wallets/refills/{refill.id}/approve",
        json={"approval": treasurer.approve_subject(refill.subject)},
        mfa=True,
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["approvals"] == ["tara"]
