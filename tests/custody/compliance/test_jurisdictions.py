"""Per-jurisdiction rules: the document is validated, the documented example decides as documented,
and the travel-rule threshold follows the jurisdiction a user was approved under."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from custody.compliance.pii import EnvelopeBox
from custody.compliance.travel_rule import TRAVEL_RULE_KEY_NAME, TravelRule
from policies.jurisdictions import (
    JurisdictionRulesError,
    default_jurisdiction_rules,
    parse_jurisdiction_json,
    parse_jurisdiction_rules,
)
from policies.kyc import DEFAULT_BLOCKED_JURISDICTIONS, jurisdiction_refusal, tier_limits
from policies.roles import Role

from ..access.conftest import fund
from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import ADDRESS, whitelist
from .conftest import services
from .test_docs import _blocks
from .test_travel_rule import DATA

SHIPPED = json.loads(resources.files("policies").joinpath("data/default_jurisdictions.json").read_text())


def test_jurisdictions_docs_example_is_the_shipped_document_and_decides_as_documented() -> None:
    blocks = _blocks()
    rules = parse_jurisdiction_json(blocks["jurisdictions.json"])
    assert rules == default_jurisdiction_rules()
    for row in json.loads(blocks["jurisdiction_decisions.json"]):
        rule = rules.rules_for(row["country"])
        assert rules.trading_refusal(row["country"], row["tier"], row["product"]) == row["refusal"], row
        assert min(rule.max_leverage, tier_limits(row["tier"]).max_leverage) == row["max_leverage"], row
        assert rule.travel_rule_threshold_usd_cents == row["travel_rule_threshold_usd_cents"], row


def test_jurisdictions_blocked_list_is_the_documents_blocked_entries() -> None:
    assert frozenset({"CU", "IR", "KP", "SY"}) == DEFAULT_BLOCKED_JURISDICTIONS
    assert jurisdiction_refusal("kp") is not None and jurisdiction_refusal("GB") is None


def _edit(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SHIPPED)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("jurisdictions", "FR", "max_leverage"), 0,
     "jurisdictions.FR.max_leverage was 0, must be an integer from 1 to 100"),
    (("jurisdictions", "FR", "max_leverage"), True, "jurisdictions.FR.max_leverage"),
    (("jurisdictions", "GB", "products"), ["spot", "cfd"], "jurisdictions.GB.products must be a list"),
    (("jurisdictions", "GB", "products"), ["spot", "spot"], "jurisdictions.GB.products must be a list"),
    (("jurisdictions", "GB", "colour"), "red", "jurisdictions.GB.colour is not a known field"),
    (("jurisdictions", "gb"), {"blocked": True}, "must be an upper-case ISO 3166-1 alpha-2 code"),
    (("jurisdictions", "GBR"), {"blocked": True}, "must be an upper-case ISO 3166-1 alpha-2 code"),
    (("jurisdictions", "CH", "min_kyc_tier"), 5, "jurisdictions.CH.min_kyc_tier was 5"),
    (("jurisdictions", "US", "travel_rule_threshold_usd_cents"), -1,
     "travel_rule_threshold_usd_cents was -1"),
    (("jurisdictions", "CU", "blocked"), "yes", "jurisdictions.CU.blocked must be true or false"),
    (("default", "blocked"), True, "default.blocked must be false"),
    (("default", "max_leverage"), _DELETE, "default.max_leverage is required"),
    (("version",), 0, "version was 0"),
    (("id",), "", "id must be 1..64"),
    (("extra",), 1, "extra is not a known field"),
])
def test_jurisdictions_invalid_document_refused_naming_the_path(path: tuple[str, ...], value: Any,
                                                                 message: str) -> None:
    with pytest.raises(JurisdictionRulesError) as info:
        parse_jurisdiction_rules(_edit(path, value))
    assert message in str(info.value)


def test_jurisdictions_not_json_refused() -> None:
    with pytest.raises(JurisdictionRulesError, match="not JSON"):
        parse_jurisdiction_json("{")


@pytest.fixture
def travel_rule_on(app: Flask, clock: Any, keystore: Any) -> TravelRule:
    access = services(app)
    rule = TravelRule(access.sessions, EnvelopeBox(keystore, TRAVEL_RULE_KEY_NAME), clock, 1_000_000)
    rule.jurisdictions = access.kyc.jurisdictions
    access.withdrawals.travel_rule = rule.check
    return rule


def _resident(app: Flask, client: FlaskClient, clock: Any, name: str, country: str | None) -> SignedClient:
    user = make_user(app, client, clock, name, {Role.TRADER}, kyc_tier=1)
    if country is not None:
        kyc = services(app).kyc
        review = kyc.request(name, 2, country)
        kyc.decide("officer1", review["id"], "approve")
    fund(app, name)
    whitelist(user)
    return user


def _withdraw(user: SignedClient, amount: int, key: str, travel_rule: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"asset": "BTC", "amount": str(amount), "destination": ADDRESS}
    if travel_rule is not None:
        body["travel_rule"] = travel_rule
    return user.post("/api/v1/withdrawals", json=body, mfa=True, idempotency_key=key)


SMALL = 100_000  # 0.001 BTC = 100 USD: under every threshold but Germany's 0


def test_travel_rule_threshold_follows_the_jurisdiction_approved_under(
    app: Flask, client: FlaskClient, clock: Any, travel_rule_on: TravelRule
) -> None:
    german = _resident(app, client, clock, "greta", "DE")  # EU transfer-of-funds rule: threshold 0
    body = assert_error(_withdraw(german, SMALL, "de-1"), 400, "travel_rule_required")
    assert "0 USD cents" in body["message"]
    data = copy.deepcopy(DATA)
    data["originator"]["account_number"] = "greta"
    assert _withdraw(german, SMALL, "de-2", data).status_code == 201
    brazilian = _resident(app, client, clock, "bruno", "BR")  # the default entry: 100,000 cents
    assert _withdraw(brazilian, SMALL, "br-1").status_code == 201
    assert_error(_withdraw(brazilian, 2_000_000, "br-2"), 400, "travel_rule_required")  # 2,000 USD
    unknown = _resident(app, client, clock, "uma", None)  # no approved review: the configured 1,000,000
    assert _withdraw(unknown, 2_000_000, "u-1").status_code == 201
