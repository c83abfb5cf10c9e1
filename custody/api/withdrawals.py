"""Whitelist, withdrawal and approval endpoints.

Another user's withdrawal or whitelist entry answers 404, exactly like one
that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from custody.api.access import decode_approval
from custody.api.auth import HEADER_IDEMPOTENCY_KEY, json_response, principal, secured, services
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_amount, field_str, json_object, query_int, reject_unknown
from custody.api.schema import accepts
from custody.withdrawals.codes import WithdrawalCode, WithdrawalError
from custody.withdrawals.service import BLOCKED, MAX_LIST, WithdrawalInput, WithdrawalView
from policies.api_key import Scope
from policies.approval import Approval
from policies.results import ResultCode
from policies.roles import Permission, has_permission

bp = Blueprint("withdrawals", __name__, url_prefix="/api/v1")

STATES = ("pending_approval", "delayed", "approved", "rejected", "cancelled", "blocked",
          "awaiting_signature", "broadcasting", "completed", "failed")
WHITELIST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["asset", "address"],
    "properties": {
        "asset": {"type": "string", "maxLength": 16},
        "address": {"type": "string", "maxLength": 256},
        "label": {"type": "string", "maxLength": 128},
    },
}
WITHDRAWAL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["asset", "amount", "destination"],
    "properties": {
        "asset": {"type": "string", "maxLength": 16},
        "amount": {"type": "string", "pattern": "^[0-9]{1,78}$"},
        "destination": {"type": "string", "maxLength": 256},
        "source_wallet": {"enum": ["hot", "cold"]},
        "travel_rule": {"type": "object"},
    },
}
APPROVAL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["approval"],
    "properties": {"approval": {"type": "string", "maxLength": 8192}},
}
REJECT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 256}},
}


def _can_read_all() -> bool:
    return has_permission(principal().user.roles, Permission.WITHDRAW_READ_ALL)


def _readable(withdrawal_id: str) -> WithdrawalView:
    view = services().withdrawals.find(withdrawal_id)
    if view is None or (view.row.username != principal().username and not _can_read_all()):
        raise WithdrawalError(
            WithdrawalCode.WITHDRAWAL_NOT_FOUND, f"withdrawal {withdrawal_id[:80]} does not exist"
        )
    return view


def _withdrawal_id(username: str) -> str:
    # A retry with the same Idempotency-Key (required here) maps to the same withdrawal and ledger
    # hold id, so even two concurrent copies create one withdrawal (the row's primary key).
    key = request.headers.get(HEADER_IDEMPOTENCY_KEY)
    assert key is not None, "secured(moves_money=True) lets no request through without the key"
    return "wd_" + hashlib.sha256(f"{username}\n{key}".encode()).hexdigest()[:32]


@bp.post("/whitelist")
@secured(Permission.WHITELIST_MANAGE_OWN, scope=Scope.WITHDRAW)
@accepts(WHITELIST_SCHEMA)
def add_whitelist() -> ResponseReturnValue:
    """Whitelist a destination address; the policy's timelock starts now."""
    body = json_object()
    reject_unknown(body, {"asset", "address", "label"})
    entry = services().withdrawals.add_whitelist(
        principal().username,
        field_str(body, "asset") or "",
        field_str(body, "address") or "",
        field_str(body, "label", required=False, default="") or "",
    )
    return json_response({"entry": entry.to_json()}, 201)


@bp.get("/whitelist")
@secured(Permission.WHITELIST_MANAGE_OWN, scope=Scope.READ, mfa=False)
def list_whitelist() -> ResponseReturnValue:
    """List your whitelisted addresses."""
    entries = services().withdrawals.list_whitelist(principal().username)
    return json_response({"entries": [e.to_json() for e in entries]})


@bp.post("/whitelist/<int:entry_id>/remove")
@secured(Permission.WHITELIST_MANAGE_OWN, scope=Scope.WITHDRAW)
def remove_whitelist(entry_id: int) -> ResponseReturnValue:
    """Remove one of your whitelisted addresses."""
    entry = services().withdrawals.remove_whitelist(principal().username, entry_id)
    return json_response({"entry": entry.to_json()})


@bp.post("/withdrawals")
@secured(Permission.WITHDRAW_REQUEST, scope=Scope.WITHDRAW, moves_money=True)
@accepts(WITHDRAWAL_SCHEMA)
def create_withdrawal() -> ResponseReturnValue:
    """Request a withdrawal: funds are held, the policy decides, the decision is explained."""
    body = json_object()
    reject_unknown(body, {"asset", "amount", "destination", "source_wallet", "travel_rule"})
    travel_rule = body.get("travel_rule")
    caller = principal()
    view = services().withdrawals.create(
        caller.user,
        WithdrawalInput(
            asset=field_str(body, "asset") or "",
            amount_minor=field_amount(body, "amount") or 0,
            destination=field_str(body, "destination") or "",
            source_wallet=field_str(body, "source_wallet", required=False, default="hot") or "",
            travel_rule=travel_rule if isinstance(travel_rule, dict) else None,
        ),
        _withdrawal_id(caller.username),
    )
    if view.row.username != caller.username:
        raise WithdrawalError(WithdrawalCode.WITHDRAWAL_NOT_FOUND, "withdrawal id collision")
    if view.state == BLOCKED:
        error = view.decision().get("error") or {}
        code = ResultCode(int(error.get("code", ResultCode.POLICY_BLOCKED)))
        raise ApiError(
            code, error.get("message", "blocked by policy"), code.http_status, withdrawal=view.to_json()
        )
    return json_response({"withdrawal": view.to_json()}, 201)


@bp.get("/withdrawals")
@secured(Permission.WITHDRAW_REQUEST, Permission.WITHDRAW_READ_ALL, scope=Scope.READ, mfa=False)
def list_withdrawals() -> ResponseReturnValue:
    """List your withdrawals (treasury, compliance, auditors: everyone's, ``?username=`` to filter)."""
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise ApiError(RequestCode.INVALID_FIELD, f"state must be one of {', '.join(STATES)}")
    username = request.args.get("username") if _can_read_all() else principal().username
    limit = query_int("limit", 100, low=1, high=MAX_LIST)
    views = services().withdrawals.query(username=username, state=state, limit=limit)
    return json_response({"withdrawals": [v.to_json() for v in views]})


@bp.get("/withdrawals/<withdrawal_id>")
@secured(Permission.WITHDRAW_REQUEST, Permission.WITHDRAW_READ_ALL, scope=Scope.READ, mfa=False)
def get_withdrawal(withdrawal_id: str) -> ResponseReturnValue:
    """Return one withdrawal with its decision explained."""
    return json_response({"withdrawal": _readable(withdrawal_id).to_json()})


@bp.post("/withdrawals/<withdrawal_id>/cancel")
@secured(Permission.WITHDRAW_REQUEST, scope=Scope.WITHDRAW, mfa=False)
def cancel_withdrawal(withdrawal_id: str) -> ResponseReturnValue:
    """Cancel your open withdrawal and release the hold (no MFA: cancelling only ever stops money)."""
    view = services().withdrawals.cancel(principal().username, withdrawal_id)
    return json_response({"withdrawal": view.to_json()})


@bp.get("/approvals/pending")
@secured(Permission.WITHDRAW_APPROVE, scope=Scope.READ, mfa=False)
def pending_approvals() -> ResponseReturnValue:
    """List withdrawals waiting for a group you are in (not your own)."""
    views = services().withdrawals.pending_for(principal().user)
    return json_response({"withdrawals": [v.to_json() for v in views]})


@bp.post("/withdrawals/<withdrawal_id>/approvals")
@secured(Permission.WITHDRAW_APPROVE, scope=Scope.WITHDRAW)
@accepts(APPROVAL_SCHEMA)
def approve_withdrawal(withdrawal_id: str) -> ResponseReturnValue:
    """Submit your signed approval (base64 of the approval bytes, docs/approvals.md)."""
    body = json_object()
    reject_unknown(body, {"approval"})
    approval = Approval.from_bytes(decode_approval(body))
    _readable(withdrawal_id)
    view = services().withdrawals.approve(principal().user, withdrawal_id, approval)
    return json_response({"withdrawal": view.to_json()})


@bp.post("/withdrawals/<withdrawal_id>/reject")
@secured(Permission.WITHDRAW_APPROVE, scope=Scope.WITHDRAW)
@accepts(REJECT_SCHEMA)
def reject_withdrawal(withdrawal_id: str) -> ResponseReturnValue:
    """Reject an open withdrawal; the hold is released."""
    body = json_object()
    reject_unknown(body, {"reason"})
    _readable(withdrawal_id)
    view = services().withdrawals.reject(
        principal().user, withdrawal_id, field_str(body, "reason", required=False, default="") or ""
    )
    return json_response({"withdrawal": view.to_json()})
