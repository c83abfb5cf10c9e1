"""Withdrawal policy endpoints: the active policy and admin-quorum governed changes."""

from __future__ import annotations

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from custody.access.policy_store import APPLIED, OPEN, SUPERSEDED
from custody.api.access import decode_approval
from custody.api.auth import json_response, principal, secured, services
from custody.api.errors import ApiError, RequestCode
from custody.api.request import json_object, reject_unknown
from custody.api.schema import accepts
from policies.api_key import Scope
from policies.approval import Approval
from policies.roles import Permission

bp = Blueprint("policy", __name__, url_prefix="/api/v1/policy")

PROPOSAL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["document"],
    "properties": {"document": {"type": "object"}},
}
APPROVAL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["approval"],
    "properties": {"approval": {"type": "string", "maxLength": 8192}},
}


@bp.get("")
@secured(Permission.POLICY_READ, scope=Scope.READ)
def active_policy() -> ResponseReturnValue:
    """Return the policy in force: id, version, digest and the document."""
    return json_response({"policy": services().policies.active().to_json()})


@bp.get("/proposals")
@secured(Permission.POLICY_READ, scope=Scope.READ)
def list_proposals() -> ResponseReturnValue:
    """List policy-change proposals (``?state=open|applied|superseded``)."""
    state = request.args.get("state")
    if state is not None and state not in (OPEN, APPLIED, SUPERSEDED):
        raise ApiError(RequestCode.INVALID_FIELD, "state must be open, applied or superseded")
    views = services().policies.list_proposals(state)
    return json_response({"proposals": [v.to_json() for v in views]})


@bp.get("/proposals/<proposal_id>")
@secured(Permission.POLICY_READ, scope=Scope.READ)
def get_proposal(proposal_id: str) -> ResponseReturnValue:
    """Return one proposal, the subject admins sign, and the approvals so far."""
    return json_response({"proposal": services().policies.get(proposal_id).to_json()})


@bp.post("/proposals")
@secured(Permission.POLICY_PROPOSE, scope=Scope.WITHDRAW)
@accepts(PROPOSAL_SCHEMA)
def propose() -> ResponseReturnValue:
    """Propose a new policy version (the active version + 1); admins must approve it."""
    body = json_object()
    reject_unknown(body, {"document"})
    view = services().policies.propose(principal().username, body.get("document"))
    return json_response({"proposal": view.to_json()}, 201)


@bp.post("/proposals/<proposal_id>/approvals")
@secured(Permission.POLICY_APPROVE, scope=Scope.WITHDRAW)
@accepts(APPROVAL_SCHEMA)
def approve(proposal_id: str) -> ResponseReturnValue:
    """Submit your signed approval; the new version is activated once the admin quorum is met."""
    body = json_object()
    reject_unknown(body, {"approval"})
    approval = Approval.from_bytes(decode_approval(body))
    view = services().policies.approve(principal().username, proposal_id, approval)
    return json_response({"proposal": view.to_json()})
