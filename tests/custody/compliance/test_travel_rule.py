"""Travel rule: withdrawals at or above the threshold carry validated IVMS101 data, stored encrypted,
exported for the beneficiary's VASP; refused (nothing held) when missing or invalid."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from custody.compliance.pii import EnvelopeBox
from custody.compliance.travel_rule import TRAVEL_RULE_KEY_NAME, TravelRule, lei_valid
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.security_log import SecurityEvent
from custody.withdrawals.models import WithdrawalRequest
from policies.roles import Role

from ..access.conftest import fund
from ..access.helpers import SignedClient, assert_error, make_user
from ..access.test_withdrawals_api import ADDRESS, SMALL_BTC, whitelist
from .conftest import services

THRESHOLD_USD_CENTS = 100_000  # 1,000 USD
BELOW_BTC = 500_000  # 0.005 BTC = 500 USD
LEI = "5493001KJTIIGC8Y1R12"
ORIGINATOR = {"primary_identifier": "Quillfeather", "secondary_identifier": "Odalys",
              "date_of_birth": "1979-11-02", "place_of_birth": "Lyon",
              "address": {"street_name": "Rue Imaginaire", "building_number": "12", "post_code": "69001",
                          "town_name": "Lyon", "country": "fr"}}
DATA: dict[str, Any] = {
    "originator": {"natural_person": ORIGINATOR, "account_number": "erin"},
    "beneficiary": {"natural_person": {"primary_identifier": "Quillfeather",
                                       "secondary_identifier": "Odalys"}, "account_number": ADDRESS},
    "beneficiary_vasp": {"name": "Example Custody GmbH", "lei": LEI},
}
_KEYS = itertools.count(1)


@pytest.fixture
def erin(app: Flask, client: FlaskClient, clock: Any, keystore: Any) -> SignedClient:
    access = services(app)
    box = EnvelopeBox(keystore, TRAVEL_RULE_KEY_NAME)
    rule = TravelRule(access.sessions, box, clock, THRESHOLD_USD_CENTS)
    access.withdrawals.travel_rule = rule.check
    object.__setattr__(access, "travel_rule", rule)  # as build_access_services wires it when configured
    user = make_user(app, client, clock, "erin", {Role.TRADER})
    fund(app, "erin")
    whitelist(user)
    return user


@pytest.fixture
def officer(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "officer1", {Role.COMPLIANCE})


def _withdraw(user: SignedClient, amount: int, travel_rule: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"asset": "BTC", "amount": str(amount), "destination": ADDRESS}
    if travel_rule is not None:
        body["travel_rule"] = travel_rule
    return user.post("/api/v1/withdrawals", json=body, mfa=True, idempotency_key=f"tr-{next(_KEYS)}")


def _nothing_held(app: Flask) -> None:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    account = ledger.find_account("erin", "BTC", AccountKind.USER_AVAILABLE)
    assert account is not None and account.balance.debits_pending == 0
    with app.extensions["strongroom.sessions"]() as session:
        assert session.scalar(select(func.count()).select_from(WithdrawalRequest)) == 0


def test_travel_rule_withdrawal_over_threshold_without_data_is_refused_and_holds_nothing(
    app: Flask, erin: SignedClient
) -> None:
    body = assert_error(_withdraw(erin, SMALL_BTC), 400, "travel_rule_required")
    assert "100000 USD cents" in body["message"]
    _nothing_held(app)


def test_travel_rule_withdrawal_below_threshold_needs_no_data(app: Flask, erin: SignedClient) -> None:
    response = _withdraw(erin, BELOW_BTC)
    assert response.status_code == 201, response.json


@pytest.mark.parametrize(("path", "value", "message"), [
    (("beneficiary", "account_number"), "bc1qsomeoneelse", "must be the withdrawal's destination"),
    (("beneficiary_vasp", "lei"), "5493001KJTIIGC8Y1R13", "not a valid ISO 17442 LEI"),
    (("originator", "natural_person", "address", "country"), "F1", "ISO 3166-1 alpha-2"),
    (("originator", "natural_person", "date_of_birth"), "2-11-1979", "YYYY-MM-DD"),
    (("originator", "natural_person", "primary_identifier"), "", "primary_identifier must be 1..100"),
])
def test_travel_rule_invalid_data_is_refused_naming_the_path(
    app: Flask, erin: SignedClient, path: tuple[str, ...], value: str, message: str
) -> None:
    data = copy.deepcopy(DATA)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    body = assert_error(_withdraw(erin, SMALL_BTC, data), 400, "travel_rule_invalid")
    assert message in body["message"] and ".".join(path[:-1]) in body["message"]
    _nothing_held(app)


def test_travel_rule_originator_with_name_only_is_refused(app: Flask, erin: SignedClient) -> None:
    data = copy.deepcopy(DATA)
    person = data["originator"]["natural_person"]
    for key in ("address", "date_of_birth", "place_of_birth"):
        del person[key]
    body = assert_error(_withdraw(erin, SMALL_BTC, data), 400, "travel_rule_invalid")
    assert "needs an address, a national_identification or a date_of_birth" in body["message"]


def test_travel_rule_data_is_stored_encrypted_and_exported_as_ivms101(
    app: Flask, erin: SignedClient, officer: SignedClient
) -> None:
    created = _withdraw(erin, SMALL_BTC, DATA)
    assert created.status_code == 201, created.json
    withdrawal_id = created.json["withdrawal"]["id"]
    with app.extensions["strongroom.sessions"]() as session:
        [row] = [" ".join(str(v) for v in r) for r in
                 session.execute(text("SELECT * FROM compliance_travel_rule")).all()]
    assert withdrawal_id in row
    assert not any(secret in row for secret in ("Quillfeather", "Odalys", "1979-11-02", "Rue Imaginaire"))
    exported = officer.get(f"/api/v1/compliance/travel-rule/{withdrawal_id}", mfa=True)
    assert exported.status_code == 200, exported.json
    ivms = exported.json["ivms101"]
    [person] = ivms["originator"]["originatorPersons"]
    assert person["naturalPerson"]["name"]["nameIdentifier"][0] == {
        "primaryIdentifier": "Quillfeather", "secondaryIdentifier": "Odalys", "nameIdentifierType": "LEGL"}
    assert person["naturalPerson"]["geographicAddress"][0]["country"] == "FR"
    assert ivms["beneficiary"]["accountNumber"] == [ADDRESS]
    assert ivms["beneficiaryVASP"]["beneficiaryVASP"]["legalPerson"]["nationalIdentification"] == {
        "nationalIdentifier": LEI, "nationalIdentifierType": "LEIX"}
    assert exported.json["transfer"] == {"withdrawal_id": withdrawal_id, "asset": "BTC",
                                         "amount_minor": str(SMALL_BTC), "destination": ADDRESS,
                                         "usd_cents": 500_000}
    with app.extensions["strongroom.sessions"]() as session:
        actions = list(session.scalars(select(SecurityEvent.action).where(
            SecurityEvent.action.like("compliance.travel_rule.%")).order_by(SecurityEvent.seq)))
    assert actions == ["compliance.travel_rule.attach", "compliance.travel_rule.export"]


def test_travel_rule_export_refusals_trader_and_unknown(
    app: Flask, erin: SignedClient, officer: SignedClient
) -> None:
    withdrawal_id = _withdraw(erin, SMALL_BTC, DATA).json["withdrawal"]["id"]
    own = erin.get(f"/api/v1/compliance/travel-rule/{withdrawal_id}", mfa=True)
    assert_error(own, 403, "permission_denied")
    unknown = officer.get("/api/v1/compliance/travel-rule/wd-nope", mfa=True)
    assert_error(unknown, 404, "travel_rule_not_found")


def test_travel_rule_lei_checksum() -> None:
    assert lei_valid(LEI)
    assert lei_valid("7LTWFZYICNSX8D621K86")
    assert not lei_valid("7LTWFZYICNSX8D621K87")
    assert not lei_valid("short")


def test_travel_rule_is_wired_only_when_a_threshold_is_configured(
    app: Flask, keystore: Any, clock: Any
) -> None:
    from strongroom.wiring import build_access_services

    sessions, ledger = app.extensions["strongroom.sessions"], app.extensions["strongroom.ledger"]
    off = build_access_services(sessions, keystore, ledger, clock)
    assert off.travel_rule is None and off.withdrawals.travel_rule is None
    on = build_access_services(sessions, keystore, ledger, clock, travel_rule_threshold_usd_cents=100_000)
    assert on.travel_rule is not None and on.travel_rule.threshold_usd_cents == 100_000
    assert on.withdrawals.travel_rule is not None
