"""Personal data: encrypted at rest (raw rows and the SQLite file hold no clear text), reads logged,
never in logs or error messages, key rotation re-wraps, least privilege over the API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import PersonalDataRecord
from custody.compliance.pii import PII_KEY_NAME
from custody.keystore import KeystoreError
from custody.security_log import SecurityEvent
from policies.roles import Role

from ..access.helpers import SignedClient, assert_error, make_user
from .conftest import services

RECORD = {"given_names": "Zelphine Quorra", "family_name": "Vantablack-Oyelaran",
          "date_of_birth": "1987-03-14", "nationality": "de", "document_type": "passport",
          "document_number": "XQ7719024K",
          "street": "Kastanienallee 77", "city": "Wuppertal-Elberfeld", "postcode": "42103", "country": "DE"}
SECRETS = ("Zelphine", "Vantablack", "1987-03-14", "XQ7719024K", "Kastanienallee", "Elberfeld")


@pytest.fixture
def dana(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "dana", {Role.TRADER})


@pytest.fixture
def officer(app: Flask, client: FlaskClient, clock: Any) -> SignedClient:
    return make_user(app, client, clock, "officer1", {Role.COMPLIANCE})


def _store(dana: SignedClient, body: dict[str, Any] | None = None) -> Any:
    return dana.request("PUT", "/api/v1/kyc/personal-data", json=body or RECORD, mfa=True)


def _raw_rows(app: Flask) -> list[str]:
    with app.extensions["strongroom.sessions"]() as session:
        return [" ".join(str(v) for v in row) for row in
                session.execute(text("SELECT * FROM compliance_personal_data")).all()]


def test_personal_data_raw_row_and_database_file_hold_no_clear_text(
    app: Flask, dana: SignedClient, database_url: str
) -> None:
    stored = _store(dana)
    assert stored.status_code == 200, stored.json
    assert stored.json["personal_data"]["revision"] == 1
    assert not any(secret in stored.get_data(as_text=True) for secret in SECRETS)
    [row] = _raw_rows(app)
    assert "dana" in row
    assert not any(secret.lower() in row.lower() for secret in SECRETS), row
    if database_url.startswith("sqlite"):
        db_file = Path(database_url.removeprefix("sqlite:///"))
        for path in db_file.parent.glob(db_file.name + "*"):  # the database and its WAL
            raw = path.read_bytes()
            assert not any(secret.encode() in raw for secret in SECRETS), path


def test_personal_data_officer_reads_it_back_and_the_read_is_logged(
    app: Flask, dana: SignedClient, officer: SignedClient
) -> None:
    _store(dana)
    read = officer.get("/api/v1/compliance/users/dana/personal-data", query={"purpose": "case 7 review"},
                       mfa=True)
    assert read.status_code == 200, read.json
    record = read.json["personal_data"]["record"]
    assert record["document_number"] == "XQ7719024K" and record["nationality"] == "DE"
    with app.extensions["strongroom.sessions"]() as session:
        events = session.scalars(select(SecurityEvent).where(SecurityEvent.action.like("compliance.pii.%"))
                                 .order_by(SecurityEvent.seq)).all()
        assert [(e.action, e.actor, e.subject) for e in events] == [
            ("compliance.pii.store", "dana", "dana"), ("compliance.pii.read", "officer1", "dana")]
        assert "case 7 review" in events[1].details
        assert not any(secret in e.details for e in events for secret in SECRETS)


def test_personal_data_read_refusals_trader_own_missing_and_no_purpose(
    app: Flask, client: FlaskClient, clock: Any, dana: SignedClient, officer: SignedClient
) -> None:
    _store(dana)
    assert_error(dana.get("/api/v1/compliance/users/dana/personal-data", query={"purpose": "x"}, mfa=True),
                 403, "permission_denied")
    assert_error(officer.get("/api/v1/compliance/users/dana/personal-data", mfa=True), 400,
                 "personal_data_invalid")
    assert_error(officer.get("/api/v1/compliance/users/nobody/personal-data", query={"purpose": "x"},
                             mfa=True), 404, "personal_data_not_found")
    services(app).personal_data.store("officer1", RECORD, actor="officer1")
    assert_error(officer.get("/api/v1/compliance/users/officer1/personal-data", query={"purpose": "x"},
                             mfa=True), 404, "personal_data_not_found")


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("date_of_birth", "1987-02-30", "date_of_birth must be a real date"),
    ("date_of_birth", "2999-01-01", "date_of_birth must be a real date"),
    ("nationality", "Germany", "nationality must be an ISO 3166-1 alpha-2 code"),
    ("document_type", "library card", "document_type must be one of"),
    ("document_number", "X" * 65, "document_number must be 1..64"),
    ("family_name", "   ", "family_name is required"),
])
def test_personal_data_invalid_field_is_refused_without_echoing_the_value(
    app: Flask, dana: SignedClient, field: str, value: str, rule: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = _store(dana, {**RECORD, field: value})
    body = assert_error(response, 400, "personal_data_invalid")
    assert rule in body["message"]
    if value.strip():
        assert value not in response.get_data(as_text=True)
    assert _raw_rows(app) == []
    assert not any(secret in caplog.text for secret in SECRETS)


def test_personal_data_store_and_read_write_nothing_personal_to_logs(
    app: Flask, dana: SignedClient, officer: SignedClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _store(dana)
    officer.get("/api/v1/compliance/users/dana/personal-data", query={"purpose": "audit"}, mfa=True)
    services(app).personal_data.rewrap(actor="service:test")
    # A refused request is logged (custody.api.services.log_refusal): the log is live, not silent.
    dana.request("PUT", "/api/v1/kyc/personal-data", json=RECORD, mfa=True, secret="not-the-secret")
    assert any("request refused" in r.getMessage() for r in caplog.records)
    assert not any(secret in caplog.text for secret in SECRETS)


def test_personal_data_key_rotation_rewraps_every_record_and_it_still_opens(
    app: Flask, keystore: Any
) -> None:
    pii = services(app).personal_data
    pii.store("dana", RECORD, actor="dana")
    pii.store("erin", {**RECORD, "given_names": "Erin"}, actor="erin")
    before = {row.username: row for row in _records(app)}
    assert {r.kek_version for r in before.values()} == {1}
    assert keystore.rotate(PII_KEY_NAME) == 2
    assert pii.rewrap(actor="service:test") == 2
    after = {row.username: row for row in _records(app)}
    assert {r.kek_version for r in after.values()} == {2}
    for name in ("dana", "erin"):
        assert after[name].wrapped_key != before[name].wrapped_key
        assert after[name].ciphertext != before[name].ciphertext
        assert after[name].wrapped_key.split(":")[1] == "v2"
    assert pii.read("officer1", "dana", "after rotation")["record"]["family_name"] == RECORD["family_name"]
    assert pii.rewrap(actor="service:test") == 0  # nothing left on the old version


def test_personal_data_row_copied_to_another_user_does_not_open(app: Flask) -> None:
    pii = services(app).personal_data
    pii.store("dana", RECORD, actor="dana")
    pii.store("erin", {**RECORD, "given_names": "Erin"}, actor="erin")
    with app.extensions["strongroom.sessions"].begin() as session:
        dana_row = session.get(PersonalDataRecord, "dana")
        erin_row = session.get(PersonalDataRecord, "erin")
        assert dana_row is not None and erin_row is not None
        erin_row.wrapped_key, erin_row.ciphertext = dana_row.wrapped_key, dana_row.ciphertext
    with pytest.raises(KeystoreError) as refused:
        pii.read("officer1", "erin", "tamper check")
    assert not any(secret in str(refused.value) for secret in SECRETS)


def test_personal_data_erase_deletes_the_record_and_logs_why(app: Flask) -> None:
    pii = services(app).personal_data
    pii.store("dana", RECORD, actor="dana")
    with pytest.raises(ComplianceError) as blank:
        pii.erase("officer1", "dana", " ")
    assert blank.value.code is ComplianceCode.PERSONAL_DATA_INVALID
    pii.erase("officer1", "dana", "retention period ended")
    assert _records(app) == []
    with pytest.raises(ComplianceError) as gone:
        pii.read("officer1", "dana", "after erasure")
    assert gone.value.code is ComplianceCode.PERSONAL_DATA_NOT_FOUND


def _pii_events(app: Flask, action: str) -> list[SecurityEvent]:
    with app.extensions["strongroom.sessions"]() as session:
        return list(session.scalars(select(SecurityEvent).where(SecurityEvent.action == action)
                                    .order_by(SecurityEvent.seq)))


def test_personal_data_erase_over_api_refuses_trader_no_mfa_unknown_user_and_no_reason(
    app: Flask, dana: SignedClient, officer: SignedClient
) -> None:
    _store(dana)
    path = "/api/v1/compliance/users/dana/personal-data/erase"
    assert_error(dana.post(path, json={"reason": "mine"}, mfa=True), 403, "permission_denied")
    assert_error(officer.post(path, json={"reason": "erasure request"}), 401, "mfa_required")
    assert_error(officer.post("/api/v1/compliance/users/nobody/personal-data/erase",
                              json={"reason": "erasure request"}, mfa=True), 404, "personal_data_not_found")
    assert officer.post(path, json={"reason": "   "}, mfa=True).status_code == 400
    assert officer.post(path, json={}, mfa=True).status_code == 400
    assert officer.post(path, json={"reason": "x", "also": 1}, mfa=True).status_code == 400
    assert [r.username for r in _records(app)] == ["dana"]  # every refusal left it on file
    assert _pii_events(app, "compliance.pii.erase") == []


def test_personal_data_erased_over_api_is_gone_and_no_longer_decrypts(
    app: Flask, dana: SignedClient, officer: SignedClient
) -> None:
    _store(dana)
    erased = officer.post("/api/v1/compliance/users/dana/personal-data/erase",
                          json={"reason": "retention period ended"}, mfa=True)
    assert erased.status_code == 200, erased.json
    assert erased.json == {"erased": {"username": "dana"}}
    assert _raw_rows(app) == []  # no ciphertext, no wrapped key left in the table
    assert_error(officer.get("/api/v1/compliance/users/dana/personal-data", query={"purpose": "after"},
                             mfa=True), 404, "personal_data_not_found")
    with pytest.raises(ComplianceError) as gone:
        services(app).personal_data.read("officer1", "dana", "after erasure")
    assert gone.value.code is ComplianceCode.PERSONAL_DATA_NOT_FOUND
    [event] = _pii_events(app, "compliance.pii.erase")
    assert (event.actor, event.subject) == ("officer1", "dana") and "retention period ended" in event.details
    assert_error(officer.post("/api/v1/compliance/users/dana/personal-data/erase",
                              json={"reason": "again"}, mfa=True), 404, "personal_data_not_found")


def test_personal_data_rewrap_over_api_after_rotation_needs_officer_mfa_and_reason(
    app: Flask, dana: SignedClient, officer: SignedClient, keystore: Any
) -> None:
    _store(dana)
    path = "/api/v1/compliance/personal-data/rewrap"
    assert keystore.rotate(PII_KEY_NAME) == 2
    assert_error(dana.post(path, json={"reason": "rotation"}, mfa=True), 403, "permission_denied")
    assert_error(officer.post(path, json={"reason": "rotation"}), 401, "mfa_required")
    assert officer.post(path, json={"reason": ""}, mfa=True).status_code == 400
    assert {r.kek_version for r in _records(app)} == {1}
    done = officer.post(path, json={"reason": "quarterly KEK rotation"}, mfa=True)
    assert done.status_code == 200 and done.json == {"rewrapped": 1}
    assert {r.kek_version for r in _records(app)} == {2}
    assert officer.post(path, json={"reason": "again"}, mfa=True).json == {"rewrapped": 0}
    runs = _pii_events(app, "compliance.pii.rewrap_run")
    assert [(e.actor, "quarterly KEK rotation" in e.details) for e in runs] == [("officer1", True),
                                                                                ("officer1", False)]
    read = officer.get("/api/v1/compliance/users/dana/personal-data", query={"purpose": "check"}, mfa=True)
    assert read.json["personal_data"]["record"]["family_name"] == RECORD["family_name"]


def _records(app: Flask) -> list[PersonalDataRecord]:
    with app.extensions["strongroom.sessions"]() as session:
        return list(session.scalars(select(PersonalDataRecord).order_by(PersonalDataRecord.username)))
