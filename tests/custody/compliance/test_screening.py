"""Sanctions screening end to end, on SQLite and PostgreSQL: withdrawals, whitelists, list updates, names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody import freezes
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.screening import ScreeningPolicy, alert_id
from custody.ledger.entry import AccountKind
from custody.security_log import page, verify_chain
from policies.roles import Role

from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import SMALL_BTC, available, whitelist, withdraw
from .conftest import LISTED_BTC, add_sdn_row, list_copy, services

CLEAN_BTC = "bc1qalicecold"


def _active_freezes(app: Flask, owner: str) -> list[freezes.FreezeView]:
    with app.extensions["strongroom.sessions"]() as session:
        return freezes.active(session, owner)


def test_whitelisting_listed_address_in_other_case_opens_case_freezes_and_blocks_withdrawal(
        app: Flask, alice: SignedClient, officer: SignedClient, loaded: int) -> None:
    # The list has the bech32 address lowercase; the user enters it uppercase (the same address).
    entry_id = whitelist(alice, LISTED_BTC.upper())
    assert [f.reason for f in _active_freezes(app, "alice")] == [f"sanctions hit on whitelist:{entry_id}"]
    funding = app.extensions["strongroom.ledger"].find_account("alice", "BTC", AccountKind.USER_AVAILABLE)
    before = available(app, funding.id)
    assert_error(withdraw(alice, SMALL_BTC, LISTED_BTC.upper()), 423, "account_frozen")
    assert available(app, funding.id) == before
    hits = officer.get("/api/v1/compliance/hits").json["hits"]
    assert [(h["username"], h["subject"], h["score"], h["evidence"]["ent_num"]) for h in hits] == [
        ("alice", f"whitelist:{entry_id}", 100, 90001)]
    case = officer.get(f"/api/v1/compliance/cases/{hits[0]['case_id']}").json["case"]
    assert (case["username"], case["kind"], case["state"], case["score"]) == (
        "alice", "sanctions", "open", 100)


def test_withdrawal_to_listed_address_is_blocked_hold_released_and_alerted(
        app: Flask, alice: SignedClient, officer: SignedClient, loaded: int) -> None:
    # Without the freeze the withdrawal itself meets the screen: it is blocked in its own transaction.
    services(app).screening.policy = ScreeningPolicy(freeze_on_address_hit=False)
    whitelist(alice, LISTED_BTC)
    body = assert_error(withdraw(alice, SMALL_BTC, LISTED_BTC), 403, "policy_blocked")
    withdrawal = body["withdrawal"]
    assert (withdrawal["state"], withdrawal["closed_by"]) == ("blocked", "compliance")
    # Nothing tells the customer which list or entry matched (no tipping off).
    assert withdrawal["close_reason"] == "refused by compliance screening"
    assert "90001" not in str(body) and "ZORBLAX" not in str(body).upper()
    assert available(app, alice.extra["account_id"])[1] == 0  # the hold was voided
    subjects = {h["subject"] for h in officer.get("/api/v1/compliance/hits").json["hits"]}
    assert f"withdrawal:{withdrawal['id']}" in subjects
    cases = officer.get("/api/v1/compliance/cases").json["cases"]
    assert len(cases) == 1  # the whitelist alert and the withdrawal alert share alice's sanctions case


def test_clean_withdrawal_is_not_screened_out(app: Flask, alice: SignedClient, officer: SignedClient,
                                              loaded: int) -> None:
    whitelist(alice, CLEAN_BTC)
    assert withdraw(alice, SMALL_BTC, CLEAN_BTC).status_code == 201
    assert officer.get("/api/v1/compliance/hits").json["hits"] == []
    assert _active_freezes(app, "alice") == []


def test_list_update_rescreens_and_catches_existing_whitelist_entry(
        app: Flask, alice: SignedClient, officer: SignedClient, loaded: int, tmp_path: Path) -> None:
    entry_id = whitelist(alice, CLEAN_BTC)
    assert _active_freezes(app, "alice") == []
    updated = list_copy(tmp_path)
    add_sdn_row(updated, '90004,"NEWLY LISTED FIXTURE, Person","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,'
                         '-0- ,-0- ,-0- ,"Digital Currency Address - XBT BC1QALICECOLD; FABRICATED."')
    result = services(app).screening.load_directory(updated, actor="officer1")
    assert (result.version, result.created) == (loaded + 1, True)
    assert result.diff["added"] == [90004] and result.diff["addresses_added"] == ["bitcoin:bc1qalicecold"]
    assert result.new_alerts == (alert_id("whitelist", f"whitelist:{entry_id}", 90004),)
    assert len(_active_freezes(app, "alice")) == 1
    assert_error(withdraw(alice, SMALL_BTC, CLEAN_BTC), 423, "account_frozen")
    # The same content again is no new version and raises nothing twice.
    again = services(app).screening.load_directory(updated, actor="officer1")
    assert (again.version, again.created, again.new_alerts) == (loaded + 1, False, ())
    versions = officer.get("/api/v1/compliance/sanctions/lists").json["versions"]
    assert [v["version"] for v in versions] == [loaded + 1, loaded]
    assert versions[0]["diff"]["added"] == [90004] and versions[1]["entry_count"] == 3


def test_list_update_removing_entry_records_diff_and_keeps_past_alerts(
        app: Flask, alice: SignedClient, officer: SignedClient, loaded: int, tmp_path: Path) -> None:
    whitelist(alice, LISTED_BTC)
    trimmed = list_copy(tmp_path)
    lines = (trimmed / "sdn.csv").read_text().splitlines(keepends=True)
    (trimmed / "sdn.csv").write_text("".join(line for line in lines if not line.startswith("90001,")))
    (trimmed / "alt.csv").write_text((trimmed / "alt.csv").read_text().split("\n", 1)[1])
    (trimmed / "add.csv").write_text((trimmed / "add.csv").read_text().split("\n", 1)[1])
    result = services(app).screening.load_directory(trimmed, actor="officer1")
    assert result.diff["removed"] == [90001]
    # A delisting lifts nothing by itself: the freeze stays until two admins lift it.
    assert len(_active_freezes(app, "alice")) == 1
    assert len(officer.get("/api/v1/compliance/hits").json["hits"]) == 1


def test_user_name_fuzzy_match_alerts_without_freezing(app: Flask, client: FlaskClient, clock: Any,
                                                        officer: SignedClient, loaded: int) -> None:
    make_user(app, client, clock, "ivanko.zorblax", {Role.TRADER}, mfa=False)
    created = services(app).screening.rescreen_all()
    assert created == [alert_id("user", "ivanko.zorblax", 90001)]
    assert _active_freezes(app, "ivanko.zorblax") == []
    hit = officer.get("/api/v1/compliance/hits").json["hits"][0]
    assert (hit["rule_id"], hit["username"], hit["evidence"]["listed_name"]) == (
        "sanctions.name", "ivanko.zorblax", "ZORBLAX, Ivanko")
    assert services(app).screening.rescreen_all() == []  # idempotent


def test_screen_name_matches_alternate_names_and_not_benign_ones(officer: SignedClient, loaded: int) -> None:
    found = officer.post("/api/v1/compliance/sanctions/screen-name", json={"name": "Natasha Petrovna"}).json
    assert [(h["ent_num"], h["listed_name"], h["score"]) for h in found["hits"]] == [
        (90003, "QUIXOTE-PETROVNA, Natalia", 100)]
    benign = officer.post("/api/v1/compliance/sanctions/screen-name", json={"name": "Alice Smith"}).json
    assert benign["hits"] == []


def test_invalid_list_is_refused_and_changes_nothing(app: Flask, officer: SignedClient, loaded: int,
                                                      tmp_path: Path) -> None:
    broken = list_copy(tmp_path)
    add_sdn_row(broken, '90005,"TOO FEW FIELDS"')
    with pytest.raises(ComplianceError, match=r"sdn\.csv line 4: 2 fields") as refused:
        services(app).screening.load_directory(broken, actor="officer1")
    assert refused.value.code == ComplianceCode.SANCTIONS_LIST_INVALID
    assert len(officer.get("/api/v1/compliance/sanctions/lists").json["versions"]) == 1


def test_security_log_records_load_alert_case_and_freeze_chain_intact(
        app: Flask, alice: SignedClient, loaded: int) -> None:
    whitelist(alice, LISTED_BTC)
    with app.extensions["strongroom.sessions"]() as session:
        events = page(session, limit=500)
        assert verify_chain(session) == len(events)
    actions = [e.action for e in events]
    assert "compliance.sanctions.load" in actions
    assert actions.index("compliance.case.open") < actions.index("compliance.alert")



def test_rescreen_pages_through_every_entry_in_batches(
        app: Flask, alice: SignedClient, loaded: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import custody.compliance.screening as screening_module

    monkeypatch.setattr(screening_module, "RESCREEN_BATCH", 1)
    first, second = whitelist(alice, "bc1qpagedone"), whitelist(alice, "bc1qpagedtwo")
    updated = list_copy(tmp_path)
    add_sdn_row(updated, '90006,"PAGED FIXTURE, Person","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
                         '-0- ,"Digital Currency Address - XBT bc1qpagedone; alt. Digital Currency Address - '
                         'XBT bc1qpagedtwo; FABRICATED."')
    result = services(app).screening.load_directory(updated, actor="officer1")
    expected = [alert_id("whitelist", f"whitelist:{entry}", 90006) for entry in (first, second)]
    assert sorted(result.new_alerts) == sorted(expected)
