"""The officers' KYC/limits report: per user tier, jurisdiction, rules versions and the caps in force."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from custody.compliance.limits_report import LIMITS_HEADER, limits_csv, limits_rows, standings
from policies.default_policy import load_default_policy
from policies.jurisdictions import default_jurisdiction_rules
from policies.kyc import tier_limits, withdrawal_limits
from policies.roles import Role

from ..access.helpers import access, make_user


def _approve(app: Flask, username: str, tier: int, country: str) -> None:
    kyc = access(app).kyc
    review = kyc.request(username, tier, country)
    kyc.decide("officer1", review["id"], "approve")


def _rows(text: str) -> dict[str, dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == LIMITS_HEADER
    return {row["username"]: row for row in reader}


def test_limits_report_rows_match_user_records_and_rules(app: Flask, client: FlaskClient, clock: Any) -> None:
    officer = make_user(app, client, clock, "officer1", {Role.COMPLIANCE}, kyc_tier=0)
    make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=1)
    make_user(app, client, clock, "bob", {Role.TRADER}, kyc_tier=1)
    make_user(app, client, clock, "carol", {Role.TRADER}, kyc_tier=0)
    make_user(app, client, clock, "dave", {Role.TRADER}, kyc_tier=1)
    _approve(app, "alice", 2, "FR")  # leverage capped at 2 by the jurisdiction
    _approve(app, "bob", 2, "US")  # spot only
    _approve(app, "dave", 2, "GB")
    _approve(app, "dave", 3, "CH")  # the latest approved review is the jurisdiction in force
    r = officer.get("/api/v1/compliance/reports/limits")
    assert r.status_code == 200, r.json
    rows = _rows(r.json["csv"])
    assert r.json["users"] == len(rows) == 5
    policy = access(app).policies.active().document
    rules = default_jurisdiction_rules()
    for name, tier, country in standings(access(app).sessions):
        row = rows[name]
        assert int(row["kyc_tier"]) == tier and row["jurisdiction"] == (country or "")
        assert row["tier_name"] == tier_limits(tier).name
        assert row["jurisdiction_rules"] == rules.label == "strongroom-jurisdictions@1"
        assert row["withdrawal_policy"] == f"{policy.policy_id}@{policy.version}"
        caps = [c for c in withdrawal_limits(policy, tier) if "max_usd_cents" in c]
        assert row["withdrawal_caps"] == ";".join(
            f"{c['rule_id']}:{c['max_usd_cents']}/{c['window_s']}s" for c in caps)
        deposit = tier_limits(tier).deposit_daily_usd_cents
        assert row["deposit_daily_usd_cents"] == ("" if deposit is None else str(deposit))
    assert (rows["alice"]["kyc_tier"], rows["alice"]["jurisdiction"], rows["alice"]["max_leverage"]) == (
        "2", "FR", "2")
    assert rows["alice"]["trading_products"] == "spot;perpetual;future;option"
    assert rows["alice"]["withdrawal_caps"] == "tier2-daily-limit:5000000/86400s"  # the shipped policy
    assert (rows["bob"]["trading_products"], rows["bob"]["travel_rule_threshold_usd_cents"]) == (
        "spot", "300000")
    assert (rows["bob"]["max_leverage"], rows["bob"]["max_notional_usd_cents"]) == ("10", "100000000")
    assert (rows["dave"]["kyc_tier"], rows["dave"]["jurisdiction"], rows["dave"]["jurisdiction_rule"]) == (
        "3", "CH", "CH")
    # No approved review: the rules' default entry; tier 0 may trade nothing and deposit nothing.
    carol = rows["carol"]
    assert (carol["jurisdiction"], carol["jurisdiction_rule"], carol["trading_products"],
            carol["max_leverage"], carol["deposit_daily_usd_cents"], carol["withdrawals_blocked"]) == (
        "", "default", "", "0", "0", "True")


def test_limits_report_refused_to_traders_and_logged_for_officers(
    app: Flask, client: FlaskClient, clock: Any
) -> None:
    officer = make_user(app, client, clock, "officer1", {Role.COMPLIANCE}, kyc_tier=0)
    trader = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    assert trader.get("/api/v1/compliance/reports/limits").status_code == 403
    assert officer.get("/api/v1/compliance/reports/limits").status_code == 200
    with access(app).sessions() as session:
        from custody.security_log import page

        logged = [(e.actor, e.subject) for e in page(session, limit=500)
                  if e.action == "compliance.report.limits"]
    assert logged == [("officer1", "*")]


def test_limits_report_unlimited_tier_writes_empty_caps() -> None:
    rules = default_jurisdiction_rules()
    policy = load_default_policy()
    rows = _rows(limits_csv(limits_rows([("inst", 4, "DE")], policy, rules)))
    assert rows["inst"]["deposit_daily_usd_cents"] == "" and rows["inst"]["max_notional_usd_cents"] == ""
    assert rows["inst"]["travel_rule_threshold_usd_cents"] == "0"


def test_limits_report_cli_writes_the_csv(sqlite_url: str, tmp_path: Any) -> None:
    from strongroom.cli import main

    env = {"STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
           "STRONGROOM_KEYSTORE_PASSPHRASE": "cli test passphrase, not a secret"}
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(main, ["compliance", "limits-report", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {"users": 0, "out": str(out)}
    assert _rows(out.read_text()) == {}
