"""Account freezes over HTTP: list them, and lift one with two admins (docs/wallets.md).

``GET /freezes`` lists the active freezes (``?owner=``). ``POST
/freezes/{id}/lift-request`` by a first admin, with MFA and a reason, asks for
the lift (202); ``POST /freezes/{id}/lift-approve`` by a *different* admin,
with MFA, lifts it (200) in one transaction with its security-log entry.
Sanctions freezes are compliance's and are refused here (409, 1125
``freeze_compliance_owned``). See custody/freezes.py.
"""

from __future__ import annotations

from typing import Final

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from custody import freezes
from custody.api.auth import json_response, principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_str, json_object, reject_unknown
from custody.api.schema import BOOL, INT, STR, accepts, answers, array, nullable, obj, path_parameters
from custody.api.services import app_clock_ms, app_sessions
from policies.api_key import Scope

bp = Blueprint("freezes", __name__, url_prefix="/api/v1/freezes")

FREEZE_VIEW: Final = obj({"id": STR, "owner": STR, "reason": STR, "raised_by": STR, "created_ms": INT,
                          "lift_requested_by": nullable(STR), "lift_reason": nullable(STR),
                          "lifted_by": nullable(STR), "lifted_ms": nullable(INT), "active": BOOL})
_REASON: Final = {"type": "string", "minLength": 1, "maxLength": freezes.REASON_MAX_LEN}
REQUEST_SCHEMA: Final = obj({"reason": _REASON}, {}) | {
    "additionalProperties": False, "example": {"reason": "owner settled the reorg shortfall"}}
APPROVE_SCHEMA: Final = obj({}, {"note": {"type": "string", "maxLength": freezes.REASON_MAX_LEN}}) | {
    "additionalProperties": False, "example": {"note": "checked the settlement entry"}}
_FREEZE_ID: Final = {"type": "string", "minLength": 1, "maxLength": freezes.FREEZE_ID_MAX_LEN,
                     "pattern": "^[A-Za-z0-9_.:-]+$"}
_OWNER_MAX: Final = 64


@bp.get("")
@secured(scope=Scope.READ, admin_only=True, mfa=False)
@answers({"200": obj({"freezes": array(FREEZE_VIEW)})})
def list_freezes() -> ResponseReturnValue:
    """List the active account freezes (``?owner=``: of one owner), oldest first."""
    owner = request.args.get("owner")
    if owner is not None and not 0 < len(owner) <= _OWNER_MAX:
        raise ApiError(RequestCode.INVALID_FIELD, f"owner must be 1..{_OWNER_MAX} characters")
    with app_sessions()() as session:
        views = freezes.active(session, owner)
    return json_response({"freezes": [v.to_json() for v in views]})


@bp.post("/<freeze_id>/lift-request")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True)
@path_parameters(freeze_id=_FREEZE_ID)
@accepts(REQUEST_SCHEMA)
@answers({"202": obj({"freeze": FREEZE_VIEW})})
def request_lift(freeze_id: str) -> ResponseReturnValue:
    """Request the lift of one freeze, with a reason (first admin); a pending request stands."""
    body = json_object()
    reject_unknown(body, {"reason"})
    reason = field_str(body, "reason") or ""
    with app_sessions().begin() as session:
        view = freezes.request_lift(session, freeze_id, admin=principal().username,
                                    roles=principal().user.roles, reason=reason, now_ms=app_clock_ms())
        body_out = {"freeze": view.to_json()}
    return json_response(body_out, 202)


@bp.post("/<freeze_id>/lift-approve")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True)
@path_parameters(freeze_id=_FREEZE_ID)
@accepts(APPROVE_SCHEMA)
@answers({"200": obj({"freeze": FREEZE_VIEW})})
def approve_lift(freeze_id: str) -> ResponseReturnValue:
    """Approve a requested lift (a second, different admin): the freeze ends now."""
    body = json_object()
    reject_unknown(body, {"note"})
    field_str(body, "note", required=False)
    with app_sessions().begin() as session:
        view = freezes.approve_lift(session, freeze_id, admin=principal().username,
                                    roles=principal().user.roles, now_ms=app_clock_ms())
        body_out = {"freeze": view.to_json()}
    return json_response(body_out, 200)
