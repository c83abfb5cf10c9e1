"""Withdrawal halts over HTTP: halt a chain or freeze everything (one admin), lift (two admins).

``POST /withdrawal-halts`` stops withdrawals at once; ``POST
/withdrawal-halts/{id}/lift`` by one admin proposes the lift (202) and by a
second admin, with MFA, lifts it (200). See custody/withdrawal_halts.py.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from custody import withdrawal_halts
from custody.api.auth import json_response, principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_str, json_object, reject_unknown
from custody.api.schema import BOOL, INT, STR, accepts, answers, array, nullable, obj, path_parameters
from custody.api.services import app_clock_ms, app_sessions
from policies.api_key import Scope

bp = Blueprint("withdrawal_halts", __name__, url_prefix="/api/v1/withdrawal-halts")

HALT_VIEW: Final = obj({"id": STR, "scope": STR, "reason": STR, "raised_by": STR, "created_ms": INT,
                        "lift_proposed_by": nullable(STR), "lifted_by": nullable(STR),
                        "lifted_ms": nullable(INT), "active": BOOL})
HALT_SCHEMA: Final = obj({"scope": {"type": "string", "enum": list(withdrawal_halts.SCOPES)}}, {
    "reason": {"type": "string", "maxLength": withdrawal_halts.REASON_MAX_CHARS},
}) | {"additionalProperties": False, "example": {"scope": "global", "reason": "hot wallet key suspected"}}
LIFT_SCHEMA: Final = obj({}, {"note": {"type": "string", "maxLength": withdrawal_halts.REASON_MAX_CHARS}}) | {
    "additionalProperties": False, "example": {"note": "incident closed, keys rotated"}}
_HALT_ID: Final = {"type": "string", "pattern": "^wh_[0-9a-f]{24}$"}


@bp.get("")
@secured(scope=Scope.READ, admin_only=True, mfa=False)
@answers({"200": obj({"halts": array(HALT_VIEW)})})
def list_halts() -> ResponseReturnValue:
    """List the withdrawal halts (``?all=1``: lifted ones too), oldest first."""
    active_only = request.args.get("all") not in ("1", "true")
    with app_sessions()() as session:
        views = withdrawal_halts.listing(session, active_only=active_only)
    return json_response({"halts": [v.to_json() for v in views]})


@bp.post("")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True)
@accepts(HALT_SCHEMA)
@answers({"201": obj({"halt": HALT_VIEW})})
def create_halt() -> ResponseReturnValue:
    """Halt withdrawals of one chain (``chain:<name>``) or all of them (``global``) now."""
    body = json_object()
    reject_unknown(body, {"scope", "reason"})
    scope = field_str(body, "scope") or ""
    reason = field_str(body, "reason", required=False, default="") or ""
    if scope not in withdrawal_halts.SCOPES:
        scopes = ", ".join(withdrawal_halts.SCOPES)
        raise ApiError(RequestCode.INVALID_FIELD, f"scope must be one of {scopes}")
    with app_sessions().begin() as session:
        view = withdrawal_halts.halt(session, scope=scope, reason=reason, admin=principal().username,
                                     now_ms=app_clock_ms())
        body_out = {"halt": view.to_json()}
    return json_response(body_out, 201)


@bp.post("/<halt_id>/lift")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True)
@path_parameters(halt_id=_HALT_ID)
@accepts(LIFT_SCHEMA)
@answers({"200": obj({"halt": HALT_VIEW}), "202": obj({"halt": HALT_VIEW})})
def lift_halt(halt_id: str) -> ResponseReturnValue:
    """Propose lifting a halt (first admin, 202) or approve the lift (a second admin, 200)."""
    body = json_object()
    reject_unknown(body, {"note"})
    field_str(body, "note", required=False)
    with app_sessions().begin() as session:
        view = withdrawal_halts.lift(session, halt_id, admin=principal().username,
                                     roles=principal().user.roles, now_ms=app_clock_ms())
        body_out = {"halt": view.to_json()}
    return json_response(body_out, 202 if view.lifted_ms is None else 200)
