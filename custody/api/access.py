"""Access endpoints: the caller, API keys, MFA enrolment, users, approver keys, security log."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Blueprint
from flask.typing import ResponseReturnValue

from custody import security_log
from custody.access.errors import AccessCode, AccessError
from custody.access.users import parse_roles, parse_scopes
from custody.api.auth import json_response, principal, secured, services
from custody.api.errors import ApiError, RequestCode
from custody.api.request import field_int, field_str, json_object, query_int, reject_unknown
from custody.api.schema import accepts
from policies.api_key import Scope
from policies.results import PolicyError, ResultCode
from policies.roles import Permission

bp = Blueprint("access", __name__, url_prefix="/api/v1")

MAX_LIST_ITEMS = 64
DEFAULT_BOOTSTRAP_SCOPES = ("read", "trade", "withdraw")

_STRING_LIST = {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": MAX_LIST_ITEMS}
API_KEY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scopes"],
    "properties": {
        "scopes": {"type": "array", "items": {"enum": ["read", "trade", "withdraw"]}, "minItems": 1},
        "label": {"type": "string", "maxLength": 128},
        "ip_allowlist": _STRING_LIST,
        "expires_ms": {"type": "integer", "minimum": 0},
    },
}
CODE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["code"],
    "properties": {"code": {"type": "string", "maxLength": 16}},
}
USER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "roles"],
    "properties": {
        "username": {"type": "string", "maxLength": 64},
        "roles": _STRING_LIST,
        "kyc_tier": {"type": "integer", "minimum": 0, "maximum": 4},
        "scopes": _STRING_LIST,
    },
}
APPROVER_KEY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key_id", "public_key"],
    "properties": {
        "key_id": {"type": "string", "maxLength": 128},
        "public_key": {"type": "string", "maxLength": 512},
        "scheme": {"enum": ["ed25519"]},
    },
}


def string_list(body: dict[str, Any], name: str, *, required: bool = True) -> list[str]:
    """Return a list-of-strings field (at most MAX_LIST_ITEMS)."""
    value = body.get(name)
    if value is None and not required:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(v, str) for v in value)
    ):
        raise ApiError(
            RequestCode.INVALID_FIELD, f"{name} must be a list of at most {MAX_LIST_ITEMS} strings"
        )
    return value


@bp.get("/me")
@secured(Permission.MFA_MANAGE_OWN, scope=Scope.READ, mfa=False)
def me() -> ResponseReturnValue:
    """Return the calling user and the key the request was signed with."""
    caller = principal()
    return json_response(
        {
            "user": caller.user.to_json(),
            "key_id": caller.key.key_id,
            "scopes": sorted(caller.key.scopes),
            "mfa_enrolled": services().mfa.is_enrolled(caller.username),
        }
    )


@bp.post("/api-keys")
@secured(Permission.APIKEY_MANAGE_OWN, scope=Scope.WITHDRAW)
@accepts(API_KEY_SCHEMA)
def create_api_key() -> ResponseReturnValue:
    """Create an API key for yourself; its secret is in this response only."""
    caller = principal()
    body = json_object()
    reject_unknown(body, {"scopes", "label", "ip_allowlist", "expires_ms"})
    scopes = parse_scopes(string_list(body, "scopes"))
    if not scopes <= caller.key.scopes:
        raise AccessError(
            AccessCode.SCOPE_ESCALATION,
            f"a key with scopes {sorted(caller.key.scopes)} cannot create one with {sorted(scopes)}",
        )
    created = services().users.create_api_key(
        caller.username,
        scopes,
        label=field_str(body, "label", required=False, default="") or "",
        ip_allowlist=string_list(body, "ip_allowlist", required=False),
        expires_ms=field_int(body, "expires_ms", required=False),
    )
    return json_response({"key": created.view.to_json(), "secret": created.credentials.secret}, 201)


@bp.get("/api-keys")
@secured(Permission.APIKEY_MANAGE_OWN, scope=Scope.READ, mfa=False)
def list_api_keys() -> ResponseReturnValue:
    """List your API keys (never their secrets)."""
    keys = services().users.list_api_keys(principal().username)
    return json_response({"keys": [k.to_json() for k in keys]})


@bp.post("/api-keys/<key_id>/revoke")
@secured(Permission.APIKEY_MANAGE_OWN, scope=Scope.WITHDRAW)
def revoke_api_key(key_id: str) -> ResponseReturnValue:
    """Revoke one of your API keys."""
    caller = principal()
    view = services().users.revoke_api_key(caller.username, key_id, actor=caller.username)
    return json_response({"key": view.to_json()})


@bp.post("/mfa/enrol")
@secured(Permission.MFA_MANAGE_OWN, scope=Scope.WITHDRAW, mfa=False)
def mfa_enrol() -> ResponseReturnValue:
    """Start TOTP enrolment; the secret and otpauth URI are in this response only."""
    enrolment = services().mfa.enrol(principal().username)
    return json_response({"secret": enrolment.secret_base32, "otpauth_uri": enrolment.provisioning_uri}, 201)


@bp.post("/mfa/confirm")
@secured(Permission.MFA_MANAGE_OWN, scope=Scope.WITHDRAW, mfa=False)
@accepts(CODE_SCHEMA)
def mfa_confirm() -> ResponseReturnValue:
    """Confirm enrolment with a first code from the authenticator."""
    body = json_object()
    reject_unknown(body, {"code"})
    refusal = services().mfa.confirm(principal().username, field_str(body, "code") or "")
    if refusal is not None:
        raise PolicyError(refusal.code, refusal.message)
    return json_response({"mfa_enrolled": True})


@bp.get("/users")
@secured(Permission.USERS_READ, scope=Scope.READ)
def list_users() -> ResponseReturnValue:
    """List users (admin, compliance)."""
    return json_response({"users": [u.to_json() for u in services().users.list_users()]})


@bp.post("/users")
@secured(Permission.USERS_MANAGE, scope=Scope.WITHDRAW)
@accepts(USER_SCHEMA)
def create_user() -> ResponseReturnValue:
    """Create a user with a first API key; the key's secret is in this response only."""
    body = json_object()
    reject_unknown(body, {"username", "roles", "kyc_tier", "scopes"})
    roles = parse_roles(string_list(body, "roles"))
    scopes = parse_scopes(string_list(body, "scopes", required=False) or DEFAULT_BOOTSTRAP_SCOPES)
    svc, actor = services(), principal().username
    user, created = svc.users.create_user(
        field_str(body, "username") or "",
        roles,
        kyc_tier=field_int(body, "kyc_tier", required=False, default=0) or 0,
        actor=actor,
        key_scopes=scopes,
    )
    assert created is not None
    return json_response(
        {"user": user.to_json(), "key": created.view.to_json(), "secret": created.credentials.secret}, 201
    )


@bp.post("/users/<username>/disable")
@secured(Permission.USERS_MANAGE, scope=Scope.WITHDRAW)
def disable_user(username: str) -> ResponseReturnValue:
    """Disable a user: every key of theirs stops working, their approvals stop counting."""
    if username == principal().username:
        raise PolicyError(ResultCode.PERMISSION_DENIED, "you cannot disable yourself")
    user = services().users.set_disabled(username, True, actor=principal().username)
    return json_response({"user": user.to_json()})


@bp.post("/approver-keys")
@secured(Permission.WITHDRAW_APPROVE, Permission.POLICY_APPROVE, scope=Scope.WITHDRAW, mfa=True)
@accepts(APPROVER_KEY_SCHEMA)
def register_approver_key() -> ResponseReturnValue:
    """Register your personal approval public key (raw Ed25519, hex)."""
    body = json_object()
    reject_unknown(body, {"key_id", "public_key", "scheme"})
    try:
        public_key = bytes.fromhex(field_str(body, "public_key") or "")
    except ValueError:
        raise ApiError(RequestCode.INVALID_FIELD, "public_key must be hex") from None
    if (field_str(body, "scheme", required=False, default="ed25519") or "") != "ed25519":
        raise ApiError(RequestCode.INVALID_FIELD, "scheme must be ed25519")
    caller = principal().username
    view = services().approvers.register(caller, field_str(body, "key_id") or "", public_key, actor=caller)
    return json_response({"approver_key": view.to_json()}, 201)


@bp.get("/approver-keys")
@secured(Permission.WITHDRAW_APPROVE, Permission.POLICY_APPROVE, scope=Scope.READ, mfa=False)
def list_approver_keys() -> ResponseReturnValue:
    """List your registered approval keys."""
    keys = services().approvers.list_keys(principal().username)
    return json_response({"approver_keys": [k.to_json() for k in keys]})


@bp.post("/approver-keys/<key_id>/revoke")
@secured(Permission.WITHDRAW_APPROVE, Permission.POLICY_APPROVE, scope=Scope.WITHDRAW, mfa=True)
def revoke_approver_key(key_id: str) -> ResponseReturnValue:
    """Revoke one of your approval keys; its approvals stop counting."""
    caller = principal().username
    view = services().approvers.revoke(caller, key_id, actor=caller)
    return json_response({"approver_key": view.to_json()})


@bp.get("/security-log")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def read_security_log() -> ResponseReturnValue:
    """Page through the hash-chained security log (``cursor`` = last seq seen)."""
    cursor = query_int("cursor", 0, low=0, high=2**63 - 1)
    limit = query_int("limit", 100, low=1, high=security_log.MAX_PAGE)
    with services().sessions() as session:
        events = security_log.page(session, after_seq=cursor, limit=limit)
    next_cursor = events[-1].seq if len(events) == limit else None
    return json_response({"events": [e.to_json() for e in events], "next_cursor": next_cursor})


def decode_approval(body: dict[str, Any]) -> bytes:
    """Return the approval bytes from a base64 ``approval`` field."""
    text = field_str(body, "approval") or ""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            RequestCode.INVALID_FIELD, "approval must be standard base64 of the approval bytes"
        ) from None
