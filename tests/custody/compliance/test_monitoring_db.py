"""Transaction monitoring over the database, on SQLite and PostgreSQL: alerts, idempotence, no holds."""

from __future__ import annotations

from flask import Flask

from custody import freezes

from ..access.helpers import SignedClient
from ..access.test_withdrawals_api import SMALL_BTC, whitelist, withdraw
from .conftest import services

JUST_UNDER_10K_USD_BTC = 9_900_000  # 0.099 BTC = 9,900 USD at the default price


def test_structuring_withdrawals_raise_one_monitoring_alert_and_hold_nobody(
        app: Flask, alice: SignedClient, officer: SignedClient) -> None:
    whitelist(alice)
    for _ in range(3):
        assert withdraw(alice, JUST_UNDER_10K_USD_BTC).status_code == 201
    raised = services(app).monitoring.run()
    assert len(raised) == 1
    [alert] = officer.get("/api/v1/compliance/alerts").json["alerts"]
    assert (alert["kind"], alert["rule_id"], alert["username"], alert["score"]) == (
        "monitoring", "structuring", "alice", 70)
    assert len(alert["evidence"]["evidence"]) == 3 and "just under" in alert["evidence"]["explanation"]
    assert alert["evidence"]["document"] == "fatf-red-flags"
    [case] = officer.get("/api/v1/compliance/cases").json["cases"]
    assert (case["kind"], case["username"]) == ("monitoring", "alice")
    assert services(app).monitoring.run() == []  # the same evidence raises nothing twice
    with app.extensions["strongroom.sessions"]() as session:
        assert freezes.active(session, "alice") == []


def test_benign_activity_raises_nothing(app: Flask, alice: SignedClient, officer: SignedClient) -> None:
    whitelist(alice)
    assert withdraw(alice, SMALL_BTC).status_code == 201
    assert services(app).monitoring.run() == []
    assert officer.get("/api/v1/compliance/alerts").json["alerts"] == []
