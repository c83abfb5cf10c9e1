"""Compliance officer endpoints: the work queue, cases, alerts, sanctions hits and lists, name screening.

Everything here needs ``aml.review`` (the compliance role); traders hold no
permission that reaches it, so they never see an alert, least of all one
about themselves. An officer's own cases and alerts are left out of every
list and answer 404 ("not found") by id. Changing a case needs a fresh MFA
code, and every change is in the security log (custody.compliance.cases).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from custody import security_log
from custody.api.audit import audit
from custody.api.auth import json_response, principal, secured, services
from custody.api.request import field_int, field_str, json_object, query_int, reject_unknown
from custody.api.schema import (
    BOOL,
    INT,
    MAYBE_INT,
    MAYBE_STR,
    OBJECT,
    STR,
    accepts,
    answers,
    array,
    nullable,
    obj,
    path_parameters,
)
from custody.assets import ASSETS
from custody.compliance.cases import CASE_STATES, MAX_LIST, RESOLUTIONS
from custody.compliance.citation import Citation, cite_latest
from custody.compliance.clearance import Clearance
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.deposits import DepositCompliance
from custody.compliance.kyc import REVIEW_STATES
from custody.compliance.limits_report import limits_csv, limits_rows, standings
from custody.compliance.pii import REQUIRED as PII_FIELDS
from custody.compliance.reports import statement_pdf
from custody.compliance.screening import SANCTIONS
from custody.compliance.statements import build_statement, month_bounds, statement_csv
from custody.compliance.tax import tax_report, tax_report_csv
from custody.compliance.trp import SIGNATURE_HEADER as TRP_SIGNATURE_HEADER
from custody.compliance.trp import TravelRuleExchange
from custody.ledger.service import Ledger
from policies.api_key import Scope
from policies.kyc import TIERS, tier_limits, withdrawal_limits
from policies.policy_document import MAX_KYC_TIER
from policies.roles import Permission, has_permission

F = TypeVar("F", bound=Callable[..., Any])
bp = Blueprint("compliance", __name__, url_prefix="/api/v1/compliance")

CASE = obj({"id": INT, "username": STR, "kind": STR, "state": {"type": "string", "enum": list(CASE_STATES)},
            "score": INT, "title": STR, "assignee": MAYBE_STR, "opened_ms": INT, "updated_ms": INT,
            "closed_by": MAYBE_STR, "closed_ms": MAYBE_INT, "resolution": MAYBE_STR,
            "close_reason": MAYBE_STR})
ALERT = obj({"id": STR, "kind": STR, "rule_id": STR, "username": STR, "subject_kind": STR, "subject": STR,
             "score": INT, "evidence": OBJECT, "created_ms": INT, "case_id": INT})
COMMENT = obj({"id": INT, "author": STR, "kind": STR, "body": STR, "at_ms": INT})
CASE_DETAIL = {**CASE,
               "properties": {**CASE["properties"], "alerts": array(ALERT), "comments": array(COMMENT)},
               "required": sorted([*CASE["required"], "alerts", "comments"])}
LIST_VERSION = obj({"version": INT, "source": STR, "digest": STR, "entry_count": INT, "address_count": INT,
                    "loaded_by": STR, "loaded_ms": INT, "diff": OBJECT})
NAME_HIT = obj({"ent_num": INT, "listed_name": STR, "matched_name": STR, "score": INT})
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIST}


def _text(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": r"\S"}


ASSIGN_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["assignee"],
                 "properties": {"assignee": {"type": "string", "minLength": 1, "maxLength": 64}}}
COMMENT_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["body"],
                  "properties": {"body": _text(4000)}}
ESCALATE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason"],
                   "properties": {"reason": _text(512)}}
CLOSE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["resolution", "reason"],
                "properties": {"resolution": {"enum": list(RESOLUTIONS)}, "reason": _text(512)}}
SCREEN_NAME_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name"],
                      "properties": {"name": _text(256)}}

READ = secured(Permission.AML_REVIEW, scope=Scope.READ, mfa=False)
# Changing a case is a decision about a customer: it needs a fresh second factor.
DECIDE = secured(Permission.AML_REVIEW, scope=Scope.READ, mfa=True)


def query(*params: tuple[str, dict[str, Any]]) -> Callable[[F], F]:
    """Attach the optional query parameters of a view for the OpenAPI document."""

    def decorate(view: F) -> F:
        view.query_schemas = [  # type: ignore[attr-defined]
            {"name": n, "in": "query", "required": False, "schema": s} for n, s in params]
        return view

    return decorate


def _viewer() -> str:
    return principal().username


def _state() -> str | None:
    state = request.args.get("state")
    if state is not None and state not in CASE_STATES:
        raise ComplianceError(ComplianceCode.CASE_INPUT_INVALID,
                              f"state was {state[:40]!r}, must be one of {', '.join(CASE_STATES)}")
    return state


@bp.get("/queue")
@READ
@query(("limit", _LIMIT))
@answers({"200": obj({"cases": array(CASE)})})
def queue() -> ResponseReturnValue:
    """List the active cases to work: escalated first, then by score, unassigned before assigned."""
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    return json_response({"cases": services().cases.queue(_viewer(), limit)})


@bp.get("/cases")
@READ
@query(("state", {"type": "string", "enum": list(CASE_STATES)}), ("limit", _LIMIT))
@answers({"200": obj({"cases": array(CASE)})})
def list_cases() -> ResponseReturnValue:
    """List cases, newest first (``?state=`` to filter)."""
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    return json_response({"cases": services().cases.list_cases(_viewer(), state=_state(), limit=limit)})


@bp.get("/cases/<int:case_id>")
@READ
@answers({"200": obj({"case": CASE_DETAIL})})
def get_case(case_id: int) -> ResponseReturnValue:
    """Return one case with its alerts (and their evidence) and its comments."""
    return json_response({"case": services().cases.get(_viewer(), case_id)})


@bp.post("/cases/<int:case_id>/assign")
@DECIDE
@accepts(ASSIGN_SCHEMA)
@answers({"200": obj({"case": CASE})})
def assign_case(case_id: int) -> ResponseReturnValue:
    """Assign a case to a compliance officer (not the user it is about)."""
    body = json_object()
    reject_unknown(body, {"assignee"})
    assignee = field_str(body, "assignee") or ""
    user = services().users.find_user(assignee)
    if user is None or not has_permission(user.roles, Permission.AML_REVIEW):
        raise ComplianceError(ComplianceCode.CASE_INPUT_INVALID,
                              f"assignee was {assignee[:64]!r}, must be a compliance officer")
    return json_response({"case": services().cases.assign(_viewer(), case_id, assignee)})


@bp.post("/cases/<int:case_id>/comment")
@DECIDE
@accepts(COMMENT_SCHEMA)
@answers({"200": obj({"case": CASE})})
def comment_case(case_id: int) -> ResponseReturnValue:
    """Add a comment to a case."""
    body = json_object()
    reject_unknown(body, {"body"})
    text = field_str(body, "body") or ""
    return json_response({"case": services().cases.comment(_viewer(), case_id, text)})


@bp.post("/cases/<int:case_id>/escalate")
@DECIDE
@accepts(ESCALATE_SCHEMA)
@answers({"200": obj({"case": CASE})})
def escalate_case(case_id: int) -> ResponseReturnValue:
    """Escalate an open case, with the reason."""
    body = json_object()
    reject_unknown(body, {"reason"})
    reason = field_str(body, "reason") or ""
    return json_response({"case": services().cases.escalate(_viewer(), case_id, reason)})


@bp.post("/cases/<int:case_id>/close")
@DECIDE
@accepts(CLOSE_SCHEMA)
@answers({"200": obj({"case": CASE})})
def close_case(case_id: int) -> ResponseReturnValue:
    """Close a case with a resolution and reason (a freeze it raised stays until two admins lift it)."""
    body = json_object()
    reject_unknown(body, {"resolution", "reason"})
    case = services().cases.close(_viewer(), case_id, field_str(body, "resolution") or "",
                                  field_str(body, "reason") or "")
    return json_response({"case": case})


@bp.get("/alerts")
@READ
@query(("limit", _LIMIT))
@answers({"200": obj({"alerts": array(ALERT)})})
def list_alerts() -> ResponseReturnValue:
    """List alerts of every kind, newest first."""
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    return json_response({"alerts": services().cases.list_alerts(_viewer(), limit=limit)})


@bp.get("/hits")
@READ
@query(("limit", _LIMIT))
@answers({"200": obj({"hits": array(ALERT)})})
def list_hits() -> ResponseReturnValue:
    """List sanctions screening hits (address and name alerts), newest first."""
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    return json_response({"hits": services().cases.list_alerts(_viewer(), kind=SANCTIONS, limit=limit)})


@bp.get("/sanctions/lists")
@READ
@answers({"200": obj({"versions": array(LIST_VERSION)})})
def list_sanctions_lists() -> ResponseReturnValue:
    """List the loaded sanctions list versions, newest first, each with its diff to the previous."""
    return json_response({"versions": services().screening.versions()})


@bp.post("/sanctions/screen-name")
@READ
@accepts(SCREEN_NAME_SCHEMA)
@answers({"200": obj({"hits": array(NAME_HIT)})})
def screen_name() -> ResponseReturnValue:
    """Screen a name against the current list (fuzzy, primary and alternate names); nothing is recorded."""
    body = json_object()
    reject_unknown(body, {"name"})
    hits = services().screening.screen_name(field_str(body, "name") or "")
    return json_response({"hits": [h.to_json() for h in hits]})


# ------------------------------------------------------------------ KYC

kyc_bp = Blueprint("kyc", __name__, url_prefix="/api/v1/kyc")
REVIEW = obj({"id": INT, "username": STR, "requested_tier": INT, "country": STR, "provider": STR,
              "state": {"type": "string", "enum": list(REVIEW_STATES)}, "reason": MAYBE_STR,
              "decided_by": MAYBE_STR, "created_ms": INT, "updated_ms": INT})
TIER = obj({"tier": INT, "name": STR, "deposit_daily_usd_cents": MAYBE_INT, "max_leverage": INT,
            "max_notional_usd_cents": MAYBE_INT, "withdrawal_limits": array(OBJECT)})
KYC_REQUEST_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["tier", "country"],
                      "properties": {"tier": {"type": "integer", "minimum": 1, "maximum": MAX_KYC_TIER},
                                     "country": {"type": "string", "pattern": "^[A-Za-z]{2}$"}}}
DECISION_SCHEMA = {"type": "object", "additionalProperties": False,
                   "properties": {"reason": {"type": "string", "maxLength": 512}}}
REASON_REQUIRED_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason"],
                          "properties": {"reason": _text(512)}}
SIGNATURE_HEADER = "X-Strongroom-KYC-Signature"
CALLBACK_SCHEMA = {"type": "object", "additionalProperties": False,
                   "required": ["event_id", "review_id", "answer"],
                   "properties": {"event_id": {"type": "string", "minLength": 1, "maxLength": 120},
                                  "review_id": {"type": "integer", "minimum": 1},
                                  "answer": {"enum": ["approved", "rejected", "more_info"]},
                                  "reason": {"type": "string", "maxLength": 512}}}
OWN = secured(Permission.LEDGER_READ_OWN, scope=Scope.READ, mfa=False)
KYC_READ = secured(Permission.KYC_READ, scope=Scope.READ, mfa=False)
KYC_DECIDE = secured(Permission.KYC_MANAGE, scope=Scope.READ, mfa=True)


def _tiers() -> list[dict[str, Any]]:
    policy = services().policies.active().document
    return [{**tier_limits(t).to_json(), "withdrawal_limits": withdrawal_limits(policy, t)} for t in TIERS]


@kyc_bp.get("/tiers")
@OWN
@answers({"200": obj({"tiers": array(TIER)})})
def kyc_tiers() -> ResponseReturnValue:
    """List the KYC tiers with their caps and the withdrawal limits the active policy applies to each."""
    return json_response({"tiers": _tiers()})


@kyc_bp.get("")
@OWN
@answers({"200": obj({"kyc_tier": INT, "limits": TIER, "reviews": array(REVIEW)})})
def my_kyc() -> ResponseReturnValue:
    """Return your KYC tier, its limits and your reviews."""
    caller = principal()
    tier = caller.user.kyc_tier
    reviews = services().kyc.reviews(caller.username, username=caller.username)
    return json_response({"kyc_tier": tier, "limits": _tiers()[tier], "reviews": reviews})


@kyc_bp.post("/requests")
@secured(Permission.LEDGER_READ_OWN, scope=Scope.READ, mfa=True)
@accepts(KYC_REQUEST_SCHEMA)
@answers({"201": obj({"review": REVIEW})})
def request_kyc() -> ResponseReturnValue:
    """Ask for a KYC tier (reviewed by a compliance officer); a blocked jurisdiction is rejected at once."""
    body = json_object()
    reject_unknown(body, {"tier", "country"})
    review = services().kyc.request(principal().username, field_int(body, "tier") or 0,
                                    field_str(body, "country") or "")
    return json_response({"review": review}, 201)


@kyc_bp.post("/providers/<provider>/callback")
@accepts(CALLBACK_SCHEMA)
@answers({"200": obj({"duplicate": BOOL, "review": REVIEW})})
def provider_callback(provider: str) -> ResponseReturnValue:
    """Receive a KYC provider's signed answer (HMAC-SHA256 of the body in X-Strongroom-KYC-Signature)."""
    signature = request.headers.get(SIGNATURE_HEADER, "")
    body = request.get_data(cache=True)
    return json_response(services().kyc.provider_callback(provider[:32], body, signature[:128]))


@bp.get("/kyc/reviews")
@KYC_READ
@query(("state", {"type": "string", "enum": list(REVIEW_STATES)}), ("limit", _LIMIT))
@answers({"200": obj({"reviews": array(REVIEW)})})
def list_kyc_reviews() -> ResponseReturnValue:
    """List KYC reviews, newest first (``?state=pending`` for the review queue)."""
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    reviews = services().kyc.reviews(_viewer(), state=request.args.get("state"), limit=limit)
    return json_response({"reviews": reviews})


def _decide(review_id: int, action: str, allowed: set[str]) -> ResponseReturnValue:
    body = json_object()
    reject_unknown(body, allowed)
    reason = field_str(body, "reason", required=False, default="") or ""
    return json_response({"review": services().kyc.decide(_viewer(), review_id, action, reason)})


@bp.post("/kyc/reviews/<int:review_id>/approve")
@KYC_DECIDE
@accepts(DECISION_SCHEMA)
@answers({"200": obj({"review": REVIEW})})
def approve_kyc(review_id: int) -> ResponseReturnValue:
    """Approve a pending review: the user's tier (and so their limits) becomes the requested tier."""
    return _decide(review_id, "approve", {"reason"})


@bp.post("/kyc/reviews/<int:review_id>/reject")
@KYC_DECIDE
@accepts(REASON_REQUIRED_SCHEMA)
@answers({"200": obj({"review": REVIEW})})
def reject_kyc(review_id: int) -> ResponseReturnValue:
    """Reject a pending review, with the reason."""
    return _decide(review_id, "reject", {"reason"})


@bp.post("/kyc/reviews/<int:review_id>/request-more")
@KYC_DECIDE
@accepts(REASON_REQUIRED_SCHEMA)
@answers({"200": obj({"review": REVIEW})})
def request_more_kyc(review_id: int) -> ResponseReturnValue:
    """Ask the user for more (documents, answers); they submit a new request."""
    return _decide(review_id, "request_more", {"reason"})


PERSONAL_DATA_SCHEMA = {"type": "object", "additionalProperties": False, "required": list(PII_FIELDS),
                        "properties": {name: {"type": "string", "minLength": 1, "maxLength": 256}
                                       for name in PII_FIELDS}}
PERSONAL_DATA_STORED = obj({"username": STR, "revision": INT, "updated_ms": INT})
PII_READ = secured(Permission.KYC_READ, scope=Scope.READ, mfa=True)


@kyc_bp.put("/personal-data")
@secured(Permission.LEDGER_READ_OWN, scope=Scope.READ, mfa=True)
@accepts(PERSONAL_DATA_SCHEMA)
@answers({"200": obj({"personal_data": PERSONAL_DATA_STORED})})
def store_personal_data() -> ResponseReturnValue:
    """Submit your identity record (stored encrypted; the answer never repeats it)."""
    caller = principal()
    stored = services().personal_data.store(caller.username, json_object(), actor=caller.username)
    return json_response({"personal_data": stored})


@bp.get("/users/<username>/personal-data")
@PII_READ
@query(("purpose", {"type": "string", "minLength": 1, "maxLength": 256}))
@answers({"200": obj({"personal_data": {**PERSONAL_DATA_STORED, "properties": {
    **PERSONAL_DATA_STORED["properties"], "record": OBJECT},
    "required": sorted([*PERSONAL_DATA_STORED["required"], "record"])}})})
def read_personal_data(username: str) -> ResponseReturnValue:
    """Read a user's identity record (``?purpose=`` required; the read is in the security log)."""
    record = services().personal_data.read(_viewer(), username[:64], request.args.get("purpose", "")[:300])
    return json_response({"personal_data": record})


@bp.post("/users/<username>/personal-data/erase")
@KYC_DECIDE
@accepts(REASON_REQUIRED_SCHEMA)
@answers({"200": obj({"erased": obj({"username": STR})})})
def erase_personal_data(username: str) -> ResponseReturnValue:
    """Erase a user's identity record (retention ended, erasure request); the reason is security-logged."""
    body = json_object()
    reject_unknown(body, {"reason"})
    services().personal_data.erase(_viewer(), username[:64], field_str(body, "reason") or "")
    return json_response({"erased": {"username": username[:64]}})


@bp.post("/personal-data/rewrap")
@KYC_DECIDE
@accepts(REASON_REQUIRED_SCHEMA)
@answers({"200": obj({"rewrapped": INT})})
def rewrap_personal_data() -> ResponseReturnValue:
    """Re-wrap every record whose data key is under an older KEK version (after a key rotation)."""
    body = json_object()
    reject_unknown(body, {"reason"})
    count = services().personal_data.rewrap(actor=_viewer(), reason=field_str(body, "reason") or "")
    return json_response({"rewrapped": count})


@bp.get("/travel-rule/<withdrawal_id>")
@PII_READ
@answers({"200": obj({"ivms101": OBJECT, "transfer": OBJECT})})
def export_travel_rule(withdrawal_id: str) -> ResponseReturnValue:
    """Export a withdrawal's travel-rule data as IVMS101 for the beneficiary's VASP (logged)."""
    travel_rule = services().travel_rule
    if travel_rule is None:
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_NOT_FOUND, "the travel rule is not configured")
    return json_response(travel_rule.export(_viewer(), withdrawal_id[:120]))


DEPOSIT = obj({"deposit_id": STR, "owner": STR, "asset": STR, "amount_minor": STR, "usd_cents": MAYBE_INT,
               "sender": STR, "tier": INT, "decision": STR, "reason": STR, "alert_id": MAYBE_STR,
               "decided_ms": INT, "released_by": MAYBE_STR, "released_ms": MAYBE_INT,
               "release_reason": MAYBE_STR})
RELEASE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason"],
                  "properties": {"reason": _text(512)}}


def _deposits() -> DepositCompliance:
    found = services().deposits
    if found is None:
        raise ComplianceError(ComplianceCode.DEPOSIT_NOT_FOUND, "deposit compliance is not configured")
    return found


@bp.get("/deposits")
@READ
@query(("decision", {"enum": ["credit", "held_tier_cap", "quarantined"]}), ("limit", _LIMIT))
@answers({"200": obj({"deposits": array(DEPOSIT)})})
def list_deposits() -> ResponseReturnValue:
    """List deposits held over a KYC cap or quarantined (``?decision=`` to filter), never your own."""
    decision = request.args.get("decision")
    if decision is not None and decision not in ("credit", "held_tier_cap", "quarantined"):
        raise ComplianceError(ComplianceCode.DEPOSIT_INPUT_INVALID,
                              "decision must be credit, held_tier_cap or quarantined")
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    return json_response({"deposits": _deposits().list(_viewer(), decision=decision, limit=limit)})


@bp.post("/deposits/<deposit_id>/release")
@DECIDE
@accepts(RELEASE_SCHEMA)
@answers({"200": obj({"deposit": DEPOSIT})})
def release_deposit(deposit_id: str) -> ResponseReturnValue:
    """Release a deposit held over the owner's KYC cap to their available balance (credited on chain)."""
    body = json_object()
    reject_unknown(body, {"reason"})
    released = _deposits().release(_viewer(), deposit_id[:120], field_str(body, "reason") or "")
    return json_response({"deposit": released})


# ------------------------------------------------------------------ sanctions freeze clearing

SANCTIONS_FREEZE = obj({"id": STR, "owner": STR, "reason": STR, "created_ms": INT,
                        "clear_requested_by": MAYBE_STR, "clear_reason": MAYBE_STR, "lifted_by": MAYBE_STR,
                        "lifted_ms": MAYBE_INT, "active": BOOL, "cases": array(INT)})
CLEAR_REQUEST_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["reason"],
                        "properties": {"reason": _text(256)},
                        "example": {"reason": "case closed: the listed address is the exchange's own pool"}}
CLEAR_APPROVE_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {}}
_FREEZE_ID_MAX = 160
_FREEZE_ID = {"type": "string", "minLength": 1, "maxLength": _FREEZE_ID_MAX, "pattern": "^[A-Za-z0-9_.:-]+$"}


def _clearance() -> Clearance:
    found = services()
    return Clearance(found.sessions, found.clock)


@bp.get("/freezes")
@READ
@answers({"200": obj({"freezes": array(SANCTIONS_FREEZE)})})
def list_sanctions_freezes() -> ResponseReturnValue:
    """List the active sanctions freezes with the cases behind each (never your own)."""
    return json_response({"freezes": _clearance().active(_viewer())})


@bp.post("/freezes/<freeze_id>/clear-request")
@DECIDE
@path_parameters(freeze_id=_FREEZE_ID)
@accepts(CLEAR_REQUEST_SCHEMA)
@answers({"202": obj({"freeze": SANCTIONS_FREEZE})})
def request_freeze_clearance(freeze_id: str) -> ResponseReturnValue:
    """First officer: ask to lift a sanctions freeze whose cases closed as false positives (reason)."""
    body = json_object()
    reject_unknown(body, {"reason"})
    view = _clearance().request(_viewer(), freeze_id[:_FREEZE_ID_MAX + 1], field_str(body, "reason") or "")
    return json_response({"freeze": view}, 202)


@bp.post("/freezes/<freeze_id>/clear-approve")
@DECIDE
@path_parameters(freeze_id=_FREEZE_ID)
@accepts(CLEAR_APPROVE_SCHEMA)
@answers({"200": obj({"freeze": SANCTIONS_FREEZE})})
def approve_freeze_clearance(freeze_id: str) -> ResponseReturnValue:
    """Second, different officer: lift the sanctions freeze now."""
    reject_unknown(json_object(), set())
    return json_response({"freeze": _clearance().approve(_viewer(), freeze_id[:_FREEZE_ID_MAX + 1])})


# ------------------------------------------------------------------ statements and tax reports

reports_bp = Blueprint("reports", __name__, url_prefix="/api/v1/reports")
# The composition root registers a callable returning the exchange's funding clearing seqs.
FUNDING_SEQS_EXTENSION = "strongroom.funding_seqs"
STATEMENT_SUMMARY = obj({"username": STR, "asset": STR, "account_id": INT, "start_ms": INT, "end_ms": INT,
                         "opening_minor": INT, "credits_minor": INT, "debits_minor": INT,
                         "closing_minor": INT, "lines": INT})
TAX_REPORT = obj({"username": STR, "year": INT, "asset": STR, "realised_pnl": INT, "funding": INT,
                  "fees": INT, "other": INT, "transfers_in": INT, "transfers_out": INT,
                  "net_movement": INT, "entries": INT, "funding_separated": BOOL, "net_income": INT})
_YEAR = {"type": "integer", "minimum": 2009, "maximum": 9999}


def _report_asset(default: str) -> str:
    asset = request.args.get("asset", default)
    if asset not in ASSETS:
        raise ComplianceError(ComplianceCode.REPORT_INPUT_INVALID,
                              f"asset was {asset[:16]!r}, must be one of {', '.join(sorted(ASSETS))}")
    return asset


_STATEMENT_QUERY = (("asset", {"type": "string"}), ("year", _YEAR),
                    ("month", {"type": "integer", "minimum": 1, "maximum": 12}),
                    ("format", {"type": "string", "enum": ["csv", "pdf"]}))
CITED_CHECKPOINT = obj({"number": INT, "last_seq": INT, "head_hash": STR, "checkpoint_hash": STR,
                         "timestamp_ms": INT, "key_version": INT})
CITATION = obj({"rests_on_seq": INT, "checkpoint": nullable(CITED_CHECKPOINT),
                "checkpoint_reason": MAYBE_STR})
STATEMENT_ANSWER = obj({"statement": STATEMENT_SUMMARY, "csv": STR, "citation": CITATION},
                       {"pdf_base64": STR})
TAX_ANSWER = obj({"report": TAX_REPORT, "csv": STR, "citation": CITATION})
_USERNAME = {"type": "string", "minLength": 1, "maxLength": 64}


@reports_bp.get("/statement")
@OWN
@query(*_STATEMENT_QUERY)
@answers({"200": STATEMENT_ANSWER})
def own_statement() -> ResponseReturnValue:
    """Your monthly statement rebuilt from the ledger (CSV; ``format=pdf`` adds the PDF, base64)."""
    return _statement(_viewer())


@reports_bp.get("/tax")
@OWN
@query(("asset", {"type": "string"}), ("year", _YEAR))
@answers({"200": TAX_ANSWER})
def own_tax() -> ResponseReturnValue:
    """Your tax year on the exchange: realised PnL, funding and fees, from the ledger (CSV too)."""
    return _tax(_viewer())


@bp.get("/users/<username>/statement")
@READ
@path_parameters(username=_USERNAME)
@query(*_STATEMENT_QUERY)
@answers({"200": STATEMENT_ANSWER})
def user_statement(username: str) -> ResponseReturnValue:
    """A user's monthly statement (officers; each one is in the security log)."""
    return _statement(username[:64])


@bp.get("/users/<username>/tax")
@READ
@path_parameters(username=_USERNAME)
@query(("asset", {"type": "string"}), ("year", _YEAR))
@answers({"200": TAX_ANSWER})
def user_tax(username: str) -> ResponseReturnValue:
    """A user's tax-year report (officers; each one is in the security log)."""
    return _tax(username[:64])


@bp.get("/reports/limits")
@KYC_READ
@answers({"200": obj({"users": INT, "csv": STR})})
def limits_report() -> ResponseReturnValue:
    """Every user's KYC tier, jurisdiction, rules versions and withdrawal and trading caps in force (CSV)."""
    access = services()
    rows = limits_rows(standings(access.sessions), access.policies.active().document,
                       access.kyc.jurisdictions)
    with access.sessions.begin() as session:
        security_log.append(session, at_ms=access.clock(), actor=_viewer(),
                            action="compliance.report.limits", subject="*", details={"users": len(rows)})
    return json_response({"users": len(rows), "csv": limits_csv(rows)})


def _statement(username: str) -> ResponseReturnValue:
    asset = _report_asset("BTC")
    year = query_int("year", 0, low=2009, high=9999)
    month = query_int("month", 0, low=1, high=12)
    if not year or not month:
        raise ComplianceError(ComplianceCode.REPORT_INPUT_INVALID, "year and month are required")
    start_ms, end_ms = month_bounds(year, month)
    built = build_statement(services_ledger(), username, asset, start_ms, end_ms)
    summary = {name: getattr(built, name) for name in (
        "username", "asset", "account_id", "start_ms", "end_ms", "opening_minor", "credits_minor",
        "debits_minor", "closing_minor")} | {"lines": len(built.lines)}
    citation = _cite(built.rests_on_seq)
    body: dict[str, Any] = {"statement": summary, "csv": statement_csv(built, citation),
                            "citation": citation.to_json()}
    if request.args.get("format") == "pdf":
        body["pdf_base64"] = base64.b64encode(statement_pdf(built, citation)).decode()
    _log_report("compliance.report.statement", username, {"asset": asset, "year": year, "month": month})
    return json_response(body)


def _tax(username: str) -> ResponseReturnValue:
    asset = _report_asset("USDC")
    year = query_int("year", 0, low=2009, high=9999)
    if not year:
        raise ComplianceError(ComplianceCode.REPORT_INPUT_INVALID, "year is required")
    seqs = current_app.extensions.get(FUNDING_SEQS_EXTENSION)
    report = tax_report(services_ledger(), username, year, asset=asset,
                        funding_seqs=None if seqs is None else seqs())
    fields = {name: getattr(report, name) for name in TAX_REPORT["required"]}
    _log_report("compliance.report.tax", username, {"asset": asset, "year": year})
    citation = _cite(report.rests_on_seq)
    return json_response({"report": fields, "csv": tax_report_csv(report, citation),
                          "citation": citation.to_json()})


def _cite(rests_on_seq: int) -> Citation:
    """The newest signed checkpoint if it covers ``rests_on_seq`` and verifies; else null and why."""
    return cite_latest(audit(), rests_on_seq)


def services_ledger() -> Ledger:
    found: Ledger = current_app.extensions["strongroom.ledger"]
    return found


def _log_report(action: str, username: str, details: dict[str, Any]) -> None:
    """A report about someone else is an access to their data: the security log records it."""
    viewer = _viewer()
    if viewer == username:
        return
    access = services()
    with access.sessions.begin() as session:
        security_log.append(session, at_ms=access.clock(), actor=viewer, action=action, subject=username,
                            details=details)


# ------------------------------------------------------------------ travel rule: counterparty VASPs

trp_bp = Blueprint("travel_rule", __name__, url_prefix="/api/v1/travel-rule")
TRP_EXTENSION = "strongroom.travel_rule_exchange"
TRP_CALLBACK_SCHEMA = {"type": "object", "additionalProperties": False,
                       "required": ["type", "transfer_id", "answer"],
                       "properties": {"type": {"enum": ["callback"]},
                                      "transfer_id": {"type": "string", "minLength": 1, "maxLength": 120},
                                      "answer": {"enum": ["approved", "rejected"]},
                                      "reason": {"type": "string", "maxLength": 256}}}
INQUIRY = obj({"withdrawal_id": STR, "vasp_lei": STR, "state": STR, "deadline_ms": INT,
               "sent_ms": MAYBE_INT, "reason": MAYBE_STR, "txid": MAYBE_STR, "duplicate": BOOL})


@trp_bp.post("/callback/<lei>")
@path_parameters(lei={"type": "string", "minLength": 20, "maxLength": 20, "pattern": "^[A-Za-z0-9]+$"})
@accepts(TRP_CALLBACK_SCHEMA)
@answers({"200": obj({"inquiry": INQUIRY})})
def trp_callback(lei: str) -> ResponseReturnValue:
    """A counterparty VASP's signed answer to our inquiry (HMAC-SHA256 of the body in X-TRP-Signature)."""
    exchange: TravelRuleExchange | None = current_app.extensions.get(TRP_EXTENSION)
    if exchange is None:
        raise ComplianceError(ComplianceCode.TRAVEL_RULE_SIGNATURE_INVALID, "unknown VASP or bad signature")
    signature = request.headers.get(TRP_SIGNATURE_HEADER, "")
    body = request.get_data(cache=True)
    return json_response({"inquiry": exchange.callback(lei[:20], body, signature[:128])})
