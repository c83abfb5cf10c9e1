"""Travel rule: withdrawals at or above the threshold carry IVMS101 originator and beneficiary data.

The withdrawal service calls `TravelRule.check` inside the transaction that
creates a withdrawal (`Withdrawals.travel_rule`). At or above the threshold
(USD cents; an unpriced asset counts as above) the request must carry a
``travel_rule`` object in the IVMS101 subset documented in docs/compliance.md:
validated (names, ISO countries, LEI checksum, the beneficiary's account
number must be the withdrawal's destination), stored envelope-encrypted like
personal data (`custody.compliance.pii`), bound to the withdrawal id. Missing
or invalid data refuses the withdrawal before anything is held or written.
`export` renders the IVMS101 payload for the beneficiary's VASP (logged).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import KycReview, TravelRuleRecord
from custody.compliance.pii import EnvelopeBox
from policies.jurisdictions import JurisdictionRules

DEFAULT_THRESHOLD_USD_CENTS = 100_000  # FATF Recommendation 16: USD/EUR 1,000.
TRAVEL_RULE_KEY_NAME = "compliance-travel-rule"
AAD_DOMAIN = "strongroom/compliance/travel-rule/v1"
NATIONAL_ID_TYPES = ("CCPT", "RAID", "DRLC", "FIIN", "TXID", "SOCS", "IDCD", "LEIX", "MISC")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_LEI = re.compile(r"^[A-Z0-9]{18}[0-9]{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NAME_MAX, TEXT_MAX = 100, 256


def lei_valid(lei: str) -> bool:
    """Tell whether ``lei`` is a well-formed ISO 17442 LEI (ISO 7064 mod 97-10 checksum)."""
    if not _LEI.match(lei):
        return False
    return int("".join(str(int(c, 36)) for c in lei)) % 97 == 1


def _invalid(message: str) -> ComplianceError:
    return ComplianceError(ComplianceCode.TRAVEL_RULE_INVALID, message)


def _text(obj: Mapping[str, Any], key: str, path: str, max_len: int, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _invalid(f"{path}.{key} must be 1..{max_len} characters")
    return value.strip()


def _object(obj: Mapping[str, Any], key: str, path: str, *,
            required: bool = True) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, Mapping):
        raise _invalid(f"{path}.{key} must be an object")
    return value


def _only(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _invalid(f"{path} has unknown field {unknown[0][:40]!r}")


def _country(value: str | None, path: str) -> str | None:
    if value is not None and not _COUNTRY.match(value.upper()):
        raise _invalid(f"{path} must be an ISO 3166-1 alpha-2 code")
    return None if value is None else value.upper()


def _person(obj: Mapping[str, Any], path: str, *, originator: bool) -> dict[str, Any]:
    """Validate a natural or legal person: exactly one of ``natural_person`` and ``legal_person``."""
    _only(obj, {"natural_person", "legal_person", "account_number"}, path)
    natural = _object(obj, "natural_person", path, required=False)
    legal = _object(obj, "legal_person", path, required=False)
    if (natural is None) == (legal is None):
        raise _invalid(f"{path} must have exactly one of natural_person and legal_person")
    out: dict[str, Any] = {}
    person: dict[str, Any]
    if natural is not None:
        p = f"{path}.natural_person"
        _only(natural, {"primary_identifier", "secondary_identifier", "address", "national_identification",
                        "date_of_birth", "place_of_birth"}, p)
        out["natural_person"] = person = {
            "primary_identifier": _text(natural, "primary_identifier", p, NAME_MAX),
            "secondary_identifier": _text(natural, "secondary_identifier", p, NAME_MAX, required=False)}
        dob = _text(natural, "date_of_birth", p, 10, required=False)
        if dob is not None and not _DATE.match(dob):
            raise _invalid(f"{p}.date_of_birth must be YYYY-MM-DD")
        person["date_of_birth"] = dob
        person["place_of_birth"] = _text(natural, "place_of_birth", p, NAME_MAX, required=False)
    else:
        assert legal is not None
        p = f"{path}.legal_person"
        _only(legal, {"name", "lei", "address", "national_identification"}, p)
        lei = _text(legal, "lei", p, 20, required=False)
        if lei is not None and not lei_valid(lei.upper()):
            raise _invalid(f"{p}.lei is not a valid ISO 17442 LEI")
        out["legal_person"] = person = {"name": _text(legal, "name", p, TEXT_MAX),
                                        "lei": None if lei is None else lei.upper()}
    source = natural if natural is not None else legal
    assert source is not None
    person["address"] = _address(source, p)
    person["national_identification"] = _national_id(source, p)
    if originator and natural is not None and not (person["address"] or person["national_identification"]
                                                   or person["date_of_birth"]):
        # IVMS101 (and most travel-rule regimes): name and account, plus an address, an
        # identity document number, or date and place of birth.
        raise _invalid(f"{p} needs an address, a national_identification or a date_of_birth")
    out["account_number"] = _text(obj, "account_number", path, TEXT_MAX)
    return out


def _address(obj: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    found = _object(obj, "address", path, required=False)
    if found is None:
        return None
    p = f"{path}.address"
    _only(found, {"street_name", "building_number", "post_code", "town_name", "country"}, p)
    return {"street_name": _text(found, "street_name", p, TEXT_MAX, required=False),
            "building_number": _text(found, "building_number", p, 16, required=False),
            "post_code": _text(found, "post_code", p, 16, required=False),
            "town_name": _text(found, "town_name", p, NAME_MAX),
            "country": _country(_text(found, "country", p, 2), f"{p}.country")}


def _national_id(obj: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    found = _object(obj, "national_identification", path, required=False)
    if found is None:
        return None
    p = f"{path}.national_identification"
    _only(found, {"national_identifier", "national_identifier_type", "country_of_issue"}, p)
    kind = _text(found, "national_identifier_type", p, 4)
    if kind not in NATIONAL_ID_TYPES:
        raise _invalid(f"{p}.national_identifier_type must be one of {', '.join(NATIONAL_ID_TYPES)}")
    return {"national_identifier": _text(found, "national_identifier", p, 35),
            "national_identifier_type": kind,
            "country_of_issue": _country(_text(found, "country_of_issue", p, 2, required=False),
                                         f"{p}.country_of_issue")}


def validate_transfer_data(body: Mapping[str, Any], destination: str) -> dict[str, Any]:
    """Return the canonical travel-rule data for a withdrawal to ``destination``, or raise naming the path."""
    _only(body, {"originator", "beneficiary", "beneficiary_vasp", "unhosted_attestation"}, "travel_rule")
    originator = _person(_object(body, "originator", "travel_rule") or {}, "travel_rule.originator",
                         originator=True)
    beneficiary = _person(_object(body, "beneficiary", "travel_rule") or {}, "travel_rule.beneficiary",
                          originator=False)
    if beneficiary["account_number"].lower() != destination.lower():
        raise _invalid("travel_rule.beneficiary.account_number must be the withdrawal's destination")
    vasp = _object(body, "beneficiary_vasp", "travel_rule", required=False)
    beneficiary_vasp = None
    if vasp is not None:
        _only(vasp, {"name", "lei"}, "travel_rule.beneficiary_vasp")
        lei = _text(vasp, "lei", "travel_rule.beneficiary_vasp", 20, required=False)
        if lei is not None and not lei_valid(lei.upper()):
            raise _invalid("travel_rule.beneficiary_vasp.lei is not a valid ISO 17442 LEI")
        beneficiary_vasp = {"name": _text(vasp, "name", "travel_rule.beneficiary_vasp", TEXT_MAX),
                            "lei": None if lei is None else lei.upper()}
    attestation = _object(body, "unhosted_attestation", "travel_rule", required=False)
    unhosted = None
    if attestation is not None:
        if beneficiary_vasp is not None:
            raise _invalid("travel_rule.unhosted_attestation is for unhosted wallets: drop beneficiary_vasp")
        _only(attestation, {"type", "statement"}, "travel_rule.unhosted_attestation")
        if attestation.get("type") != "declared":
            raise _invalid("travel_rule.unhosted_attestation.type must be declared")
        statement = _text(attestation, "statement", "travel_rule.unhosted_attestation", TEXT_MAX)
        unhosted = {"type": "declared", "statement": statement}
    out = {"originator": originator, "beneficiary": beneficiary, "beneficiary_vasp": beneficiary_vasp}
    if unhosted is not None:
        out["unhosted_attestation"] = unhosted
    return out


class InquiryOpener(Protocol):
    """Opens an inquiry to the beneficiary's VASP in the caller's transaction; True: the withdrawal waits."""

    def open_inquiry(self, session: Session, username: str, withdrawal_id: str,
                     record: Mapping[str, Any]) -> bool: ...


class TravelRule:
    """Require, store (encrypted) and export travel-rule data of withdrawals at or above the threshold."""

    def __init__(self, sessions: sessionmaker[Session], box: EnvelopeBox, clock: Callable[[], int],
                 threshold_usd_cents: int = DEFAULT_THRESHOLD_USD_CENTS, originating_vasp: str = "Strongroom",
                 originating_vasp_lei: str | None = None) -> None:
        assert threshold_usd_cents >= 0, f"threshold was {threshold_usd_cents}, must be >= 0"
        self._sessions = sessions
        self._box = box
        self._clock = clock
        self.threshold_usd_cents = threshold_usd_cents
        # Per-jurisdiction thresholds (policies/jurisdictions.py); None: one threshold for everyone.
        self.jurisdictions: JurisdictionRules | None = None
        # The TRP exchange with counterparty VASPs (custody/compliance/trp.py); None: no inquiries.
        self.exchange: InquiryOpener | None = None
        self._vasp = {"name": originating_vasp, "lei": originating_vasp_lei}

    def check(self, session: Session, username: str, withdrawal_id: str, asset: str, amount_minor: int,
              destination: str, usd_cents: int | None, data: Mapping[str, Any] | None) -> bool:
        """Refuse (raise) a withdrawal at or above the threshold without valid data; store it if given.

        True: the withdrawal waits for the beneficiary VASP's approval (an inquiry was opened).
        """
        threshold = self.threshold_for(session, username)
        required = usd_cents is None or usd_cents >= threshold
        if data is None:
            if required:
                raise ComplianceError(
                    ComplianceCode.TRAVEL_RULE_REQUIRED,
                    f"withdrawals of {threshold} USD cents or more (or of an unpriced asset) "
                    "need travel_rule originator and beneficiary data (docs/compliance.md)")
            return False
        record = validate_transfer_data(data, destination)
        wait = False
        if required and self.exchange is not None:
            if record["beneficiary_vasp"] is None:
                if "unhosted_attestation" not in record:
                    raise _invalid("travel_rule.unhosted_attestation is required for a withdrawal to an "
                                   "unhosted wallet at or above the threshold (the user declares control)")
            else:
                wait = self.exchange.open_inquiry(session, username, withdrawal_id, record)
        payload = {"transfer": {"withdrawal_id": withdrawal_id, "asset": asset,
                                "amount_minor": str(amount_minor), "destination": destination,
                                "usd_cents": usd_cents}, **record}
        kek_version, wrapped, sealed = self._box.seal(f"{AAD_DOMAIN}\x00{withdrawal_id}".encode(), payload)
        now_ms = self._clock()
        session.add(TravelRuleRecord(withdrawal_id=withdrawal_id, username=username,
                                     kek_name=self._box.key_name, kek_version=kek_version,
                                     wrapped_key=wrapped, ciphertext=sealed, created_ms=now_ms))
        security_log.append(session, at_ms=now_ms, actor=username, action="compliance.travel_rule.attach",
                            subject=withdrawal_id, details={"required": required, "waits": wait})
        return wait

    def threshold_for(self, session: Session, username: str) -> int:
        """Return the user's threshold: their approved jurisdiction's rule, else the configured one.

        A user approved under a jurisdiction (KYC onboarding records it) gets
        that jurisdiction's ``travel_rule_threshold_usd_cents`` (the rules'
        default when it has no entry); a user with no approved review gets
        ``threshold_usd_cents``.
        """
        if self.jurisdictions is None:
            return self.threshold_usd_cents
        country = session.scalar(
            select(KycReview.country)
            .where(KycReview.username == username, KycReview.state == "approved")
            .order_by(KycReview.id.desc())
            .limit(1))
        if country is None:
            return self.threshold_usd_cents
        return self.jurisdictions.rules_for(country).travel_rule_threshold_usd_cents

    def export(self, officer: str, withdrawal_id: str) -> dict[str, Any]:
        """Return the IVMS101 payload for the beneficiary's VASP (the export is in the security log)."""
        with self._sessions.begin() as session:
            row = session.get(TravelRuleRecord, withdrawal_id)
            if row is None or row.username == officer:
                raise ComplianceError(ComplianceCode.TRAVEL_RULE_NOT_FOUND,
                                      f"no travel-rule data for withdrawal {withdrawal_id[:64]!r}")
            payload = self._box.open(row.kek_name, row.wrapped_key, row.ciphertext,
                                     f"{AAD_DOMAIN}\x00{withdrawal_id}".encode())
            security_log.append(session, at_ms=self._clock(), actor=officer,
                                action="compliance.travel_rule.export", subject=withdrawal_id, details={})
        return ivms101(payload, self._vasp)


def ivms101(payload: Mapping[str, Any], originating_vasp: Mapping[str, Any]) -> dict[str, Any]:
    """Render stored travel-rule data as an IVMS101 (camelCase) message with the transfer it belongs to."""
    return {"ivms101": {
        "originator": {"originatorPersons": [_ivms_person(payload["originator"])],
                       "accountNumber": [payload["originator"]["account_number"]]},
        "beneficiary": {"beneficiaryPersons": [_ivms_person(payload["beneficiary"])],
                        "accountNumber": [payload["beneficiary"]["account_number"]]},
        "originatingVASP": {"originatingVASP": {"legalPerson": _ivms_legal(dict(originating_vasp))}},
        "beneficiaryVASP": None if payload["beneficiary_vasp"] is None else {
            "beneficiaryVASP": {"legalPerson": _ivms_legal(payload["beneficiary_vasp"])}}},
        "transfer": payload["transfer"]}


def _ivms_person(person: Mapping[str, Any]) -> dict[str, Any]:
    if "natural_person" in person:
        p = person["natural_person"]
        out: dict[str, Any] = {"name": {"nameIdentifier": [{
            "primaryIdentifier": p["primary_identifier"], "secondaryIdentifier": p["secondary_identifier"],
            "nameIdentifierType": "LEGL"}]}}
        if p["date_of_birth"]:
            out["dateAndPlaceOfBirth"] = {"dateOfBirth": p["date_of_birth"],
                                          "placeOfBirth": p["place_of_birth"]}
        key = "naturalPerson"
    else:
        p = person["legal_person"]
        out = _ivms_legal(p)
        key = "legalPerson"
    if p.get("address"):
        a = p["address"]
        out["geographicAddress"] = [{"addressType": "GEOG", "streetName": a["street_name"],
                                     "buildingNumber": a["building_number"], "postCode": a["post_code"],
                                     "townName": a["town_name"], "country": a["country"]}]
    if p.get("national_identification"):
        n = p["national_identification"]
        out["nationalIdentification"] = {"nationalIdentifier": n["national_identifier"],
                                         "nationalIdentifierType": n["national_identifier_type"],
                                         "countryOfIssue": n["country_of_issue"]}
    return {key: out}


def _ivms_legal(p: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": {"nameIdentifier": [{"legalPersonName": p["name"],
                                                        "legalPersonNameIdentifierType": "LEGL"}]}}
    if p.get("lei"):
        out["nationalIdentification"] = {"nationalIdentifier": p["lei"], "nationalIdentifierType": "LEIX"}
    return out


def canonical(payload: Mapping[str, Any]) -> str:
    """Return canonical JSON of a payload (for tests and exports)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))
