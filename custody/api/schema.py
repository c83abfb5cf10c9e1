"""What the OpenAPI document says about each operation: request body, success responses.

The views still parse strictly by hand (custody.api.request); these schemas
tell clients (and schemathesis) what a valid body looks like and what a
success answers with. A view carries its own (``@accepts`` for the body,
``@answers`` for the responses, as the exchange blueprint does), or it is
described here in `OPERATIONS` by endpoint name, so the views of custody need
no edits to be documented. Every refusal is the shared ``Error`` component
(``{code, error, message}``); `custody.api.openapi` adds it to each operation.

Schemas name the fields a response always has (``required``) and their types;
they do not forbid extra fields, so adding a field is not a breaking change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
Schema = dict[str, Any]

WITHDRAWAL_STATES: Final = (
    "pending_approval", "delayed", "approved", "rejected", "cancelled", "blocked",
    "awaiting_signature", "broadcasting", "completed", "failed",
)


def accepts(schema: Schema) -> Callable[[F], F]:
    """Attach the JSON schema of the request body to a view."""

    def decorate(view: F) -> F:
        view.request_schema = schema  # type: ignore[attr-defined]
        return view

    return decorate


def answers(responses: dict[str, Schema]) -> Callable[[F], F]:
    """Attach the success responses (status -> JSON schema) to a view."""

    def decorate(view: F) -> F:
        view.response_schemas = responses  # type: ignore[attr-defined]
        return view

    return decorate


def path_parameters(**schemas: Schema) -> Callable[[F], F]:
    """Attach schemas for path parameters that are narrower than their converter (an enum, say)."""

    def decorate(view: F) -> F:
        view.path_schemas = schemas  # type: ignore[attr-defined]
        return view

    return decorate


# ------------------------------------------------------------------ building blocks


def ref(name: str) -> Schema:
    """Return a reference to component ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """Return an object schema whose ``required`` keys are always present."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        schema["required"] = sorted(required)
    return schema


def array(items: Schema) -> Schema:
    """Return an array schema."""
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    """Return ``schema`` that also admits null (OpenAPI 3.0)."""
    return {**schema, "nullable": True}


INT: Final[Schema] = {"type": "integer"}
STR: Final[Schema] = {"type": "string"}
BOOL: Final[Schema] = {"type": "boolean"}
OBJECT: Final[Schema] = {"type": "object"}
DIGITS: Final[Schema] = {"type": "string", "pattern": "^-?[0-9]+$"}  # an amount in minor units
MAYBE_INT: Final[Schema] = nullable(INT)
MAYBE_STR: Final[Schema] = nullable(STR)
APPROVAL_REFS: Final[Schema] = array(obj({"approval_id": STR, "approver": STR, "key_id": STR}))

COMPONENTS: Final[dict[str, Schema]] = {
    "Error": obj(
        {"code": INT, "error": STR, "message": STR},
        {"withdrawal": ref("Withdrawal"), "index": INT},
    ),
    "User": obj({"username": STR, "roles": array(STR), "kyc_tier": INT, "created_ms": INT,
                 "disabled_ms": MAYBE_INT}),
    "ApiKey": obj({"key_id": STR, "username": STR, "label": STR, "scopes": array(STR),
                   "ip_allowlist": array(STR), "created_ms": INT, "expires_ms": MAYBE_INT,
                   "revoked_ms": MAYBE_INT}),
    "ApproverKey": obj({"key_id": STR, "username": STR, "scheme": STR, "public_key": STR,
                        "registered_ms": INT, "revoked_ms": MAYBE_INT}),
    "SecurityEvent": obj({"seq": INT, "at_ms": INT, "actor": STR, "action": STR, "subject": STR,
                          "outcome": STR, "details": OBJECT, "prev_hash": STR, "hash": STR}),
    "WhitelistEntry": obj({"id": INT, "username": STR, "asset": STR, "address": STR, "label": STR,
                           "added_ms": INT}),
    "Withdrawal": obj({
        "id": STR, "username": STR, "asset": STR, "amount": DIGITS, "destination": STR,
        "source_wallet": STR, "state": {"type": "string", "enum": list(WITHDRAWAL_STATES)},
        "policy": obj({"id": STR, "version": INT, "digest": STR}, {"rule_id": MAYBE_STR}),
        "required": nullable(obj({"count": INT, "group": STR})),
        "release_at_ms": MAYBE_INT, "hold_transfer_id": MAYBE_STR, "approvals": APPROVAL_REFS,
        "subject": OBJECT, "decision": OBJECT, "created_ms": INT, "updated_ms": INT,
        "closed_by": MAYBE_STR, "close_reason": MAYBE_STR,
    }),
    "LedgerAccount": obj({
        "id": INT, "owner": STR, "asset": STR, "kind": STR, "flags": INT, "created_ms": INT,
        "balance": obj({"debits_pending": DIGITS, "debits_posted": DIGITS,
                        "credits_pending": DIGITS, "credits_posted": DIGITS}),
        "last_seq": INT,
    }),
    "LedgerEntry": obj({
        "seq": INT, "id": STR, "kind": {"type": "string", "enum": ["single", "pending", "post", "void"]},
        "debit_account": INT, "credit_account": INT, "asset": STR, "amount": DIGITS,
        "pending_id": MAYBE_STR, "timeout_s": INT, "expires_ms": MAYBE_INT, "code": INT,
        "reference": STR, "timestamp_ms": INT,
    }, {"v": INT, "actor": STR}),
    "TransferResult": obj(
        {"index": INT, "id": STR, "status": STR},
        {"transfer": ref("LedgerEntry"), "code": INT, "error": STR, "message": STR},
    ),
    "PolicyProposal": obj({
        "proposal_id": STR, "policy_id": STR, "base_version": INT, "new_version": INT,
        "document_sha256": STR, "proposer": STR, "state": {"type": "string",
                                                          "enum": ["open", "applied", "superseded"]},
        "created_ms": INT, "required": obj({"count": INT, "group": STR}),
        "approvals": APPROVAL_REFS, "subject": OBJECT, "document": OBJECT,
    }),
    "Checkpoint": obj({"hash": STR, "checkpoint": OBJECT}),
    "ReservesSnapshot": obj({"id": INT, "ledger_seq": INT}),
    "Reconciliation": obj({"id": INT, "chain": STR, "height": INT, "run_ms": INT, "status": STR,
                           "lines": array(OBJECT)}),
}


def _wrap(name: str, schema: Schema) -> Schema:
    return obj({name: schema})


WITHDRAWAL_ANSWER: Final = _wrap("withdrawal", ref("Withdrawal"))
PROPOSAL_ANSWER: Final = _wrap("proposal", ref("PolicyProposal"))
BATCH_ANSWER: Final = obj({"linked": BOOL, "results": array(ref("TransferResult"))})
HEALTH: Final = obj({"status": {"type": "string", "enum": ["ok", "degraded"]}, "database": STR},
                    {"keystore": STR, "ledger": obj({"seq": INT}, {"head": MAYBE_STR})})
OPENAPI_DOCUMENT: Final = obj({"openapi": STR, "info": OBJECT, "paths": OBJECT})


@dataclass(frozen=True)
class Operation:
    """The documented request body (None: the operation takes none) and success responses."""

    responses: dict[str, Schema]
    request: Schema | None = None
    media_type: str = "application/json"
    path: dict[str, Schema] | None = None  # path parameters narrower than their converter
    undocumented: bool = False  # not in the table nor on the view: the completeness test fails


OK = "200"
CREATED = "201"
# Transfer ids (custody.ledger.posting.TRANSFER_ID_PATTERN).
_TRANSFER_ID: Final[Schema] = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,119}$"}

# A manual ledger operation awaiting (or after) a second admin's approval (custody.access.ledger_ops).
LEDGER_PROPOSAL: Final[Schema] = obj({
    "id": STR, "proposer": STR, "reason": STR,
    "state": {"enum": ["proposed", "executed", "failed", "rejected"]},
    "transfers": array(OBJECT), "created_ms": INT, "decided_by": nullable(STR), "decided_ms": nullable(INT),
    "results": nullable(array(OBJECT)),
})
LEDGER_PROPOSAL_ANSWER: Final[Schema] = obj({"proposal": LEDGER_PROPOSAL})
LEDGER_DECISION: Final[Schema] = obj({"proposal": LEDGER_PROPOSAL, "results": array(OBJECT)})

# Views of custody (and of the app itself) described by endpoint name. Request bodies the
# views declare with @accepts take precedence over ``request`` here.
OPERATIONS: Final[dict[str, Operation]] = {
    # ---------------------------------------------------------------- app
    "health": Operation({OK: HEALTH, "503": HEALTH}),
    "ready": Operation({OK: obj({"ready": BOOL, "checks": OBJECT})}),
    "assets": Operation({OK: _wrap("assets", array(obj({"code": STR, "decimals": INT, "name": STR})))}),
    "openapi.openapi_document": Operation({OK: OPENAPI_DOCUMENT}),
    "openapi.docs_page": Operation({OK: {"type": "string"}}, media_type="text/html"),
    # ---------------------------------------------------------------- access
    "access.me": Operation({OK: obj({"user": ref("User"), "key_id": STR, "scopes": array(STR),
                                     "mfa_enrolled": BOOL})}),
    "access.create_api_key": Operation({CREATED: obj({"key": ref("ApiKey"), "secret": STR})}),
    "access.list_api_keys": Operation({OK: _wrap("keys", array(ref("ApiKey")))}),
    "access.revoke_api_key": Operation({OK: _wrap("key", ref("ApiKey"))}),
    "access.mfa_enrol": Operation({CREATED: obj({"secret": STR, "otpauth_uri": STR})}),
    "access.mfa_confirm": Operation({OK: obj({"mfa_enrolled": BOOL})}),
    "access.list_users": Operation({OK: _wrap("users", array(ref("User")))}),
    "access.create_user": Operation({CREATED: obj({"user": ref("User"), "key": ref("ApiKey"),
                                                   "secret": STR})}),
    "access.disable_user": Operation({OK: _wrap("user", ref("User"))}),
    "access.register_approver_key": Operation({CREATED: _wrap("approver_key", ref("ApproverKey"))}),
    "access.list_approver_keys": Operation({OK: _wrap("approver_keys", array(ref("ApproverKey")))}),
    "access.revoke_approver_key": Operation({OK: _wrap("approver_key", ref("ApproverKey"))}),
    "access.read_security_log": Operation({OK: obj({"events": array(ref("SecurityEvent")),
                                                    "next_cursor": MAYBE_INT})}),
    # ---------------------------------------------------------------- withdrawals
    "withdrawals.add_whitelist": Operation({CREATED: _wrap("entry", ref("WhitelistEntry"))}),
    "withdrawals.list_whitelist": Operation({OK: _wrap("entries", array(ref("WhitelistEntry")))}),
    "withdrawals.remove_whitelist": Operation({OK: _wrap("entry", ref("WhitelistEntry"))}),
    "withdrawals.create_withdrawal": Operation({CREATED: WITHDRAWAL_ANSWER}),
    "withdrawals.list_withdrawals": Operation({OK: _wrap("withdrawals", array(ref("Withdrawal")))}),
    "withdrawals.get_withdrawal": Operation({OK: WITHDRAWAL_ANSWER}),
    "withdrawals.cancel_withdrawal": Operation({OK: WITHDRAWAL_ANSWER}),
    "withdrawals.pending_approvals": Operation({OK: _wrap("withdrawals", array(ref("Withdrawal")))}),
    "withdrawals.approve_withdrawal": Operation({OK: WITHDRAWAL_ANSWER}),
    "withdrawals.reject_withdrawal": Operation({OK: WITHDRAWAL_ANSWER}),
    # ---------------------------------------------------------------- policy
    "policy.active_policy": Operation({OK: _wrap("policy", obj({
        "policy_id": STR, "version": INT, "digest": STR, "activated_ms": INT, "document": OBJECT}))}),
    "policy.list_proposals": Operation({OK: _wrap("proposals", array(ref("PolicyProposal")))}),
    "policy.get_proposal": Operation({OK: PROPOSAL_ANSWER}),
    "policy.propose": Operation({CREATED: PROPOSAL_ANSWER}),
    "policy.approve": Operation({OK: PROPOSAL_ANSWER}),
    # ---------------------------------------------------------------- ledger
    "ledger.create_account": Operation({CREATED: ref("LedgerAccount")}, request=obj(
        {"owner": {"type": "string", "maxLength": 64}, "asset": {"type": "string", "maxLength": 16},
         "kind": {"type": "string", "maxLength": 32}},
        {"flags": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}) | {
        "additionalProperties": False}),
    "ledger.list_accounts": Operation({OK: _wrap("accounts", array(ref("LedgerAccount")))}),
    "ledger.get_account": Operation({OK: ref("LedgerAccount")}),
    "ledger.account_history": Operation({OK: obj({"entries": array(ref("LedgerEntry")),
                                                  "next_cursor": nullable(DIGITS)})}),
    "ledger.create_transfer": Operation({"202": LEDGER_PROPOSAL_ANSWER}, request=ref("TransferRequest")),
    "ledger.create_batch": Operation(
        {"202": LEDGER_PROPOSAL_ANSWER, "422": {"anyOf": [BATCH_ANSWER, ref("Error")]}},
        request=obj({"transfers": {**array(ref("TransferRequest")), "minItems": 1, "maxItems": 8190}},
                    {"linked": BOOL}) | {"additionalProperties": False}),
    "ledger.post_pending": Operation({"202": LEDGER_PROPOSAL_ANSWER}, request=ref("TransferResolution"),
                                     path={"pending_id": _TRANSFER_ID}),
    "ledger.void_pending": Operation({"202": LEDGER_PROPOSAL_ANSWER}, request=ref("TransferVoid"),
                                     path={"pending_id": _TRANSFER_ID}),
    "ledger.list_proposals": Operation({OK: _wrap("proposals", array(LEDGER_PROPOSAL))}),
    "ledger.get_proposal": Operation({OK: LEDGER_PROPOSAL_ANSWER}),
    "ledger.approve_proposal": Operation({OK: LEDGER_DECISION, "422": LEDGER_DECISION}),
    "ledger.reject_proposal": Operation({OK: LEDGER_PROPOSAL_ANSWER}, request=obj(
        {}, {"reason": {"type": "string", "maxLength": 256}}) | {"additionalProperties": False}),
    "ledger.get_transfer": Operation({OK: ref("LedgerEntry")}),
    # ---------------------------------------------------------------- audit
    "audit.keys": Operation({OK: obj({"format": STR, "version": INT, "keys": array(OBJECT)})}),
    "audit.create_checkpoint": Operation({CREATED: ref("Checkpoint")}),
    "audit.list_checkpoints": Operation({OK: _wrap("checkpoints", array(ref("Checkpoint")))}),
    "audit.latest_checkpoint": Operation({OK: ref("Checkpoint")}),
    "audit.get_checkpoint": Operation({OK: ref("Checkpoint")}),
    "audit.inclusion_proof": Operation({OK: OBJECT}),
    "audit.consistency_proof": Operation({OK: OBJECT}),
    "audit.create_snapshot": Operation({CREATED: ref("ReservesSnapshot")}),
    "audit.latest_snapshot": Operation({OK: ref("ReservesSnapshot")}),
    "audit.get_snapshot": Operation({OK: ref("ReservesSnapshot")}),
    "audit.liability_proof": Operation({OK: OBJECT}),
    "audit.reserves_report_view": Operation({OK: obj({"snapshot": INT, "ledger_seq": INT, "assets": {}})}),
    # ---------------------------------------------------------------- wallets
    "wallets.list_wallets": Operation({OK: _wrap("wallets", array(obj({
        "name": STR, "chain": STR, "temperature": STR, "account_path": STR, "account_xpub": STR,
        "deposit_addresses_issued": MAYBE_INT, "addresses": array(obj({"address": STR, "path": STR}))})))}),
    "wallets.list_transactions": Operation({OK: _wrap("transactions", array(obj({
        "id": STR, "chain": STR, "purpose": STR, "asset": STR, "amount": DIGITS, "destination": STR,
        "status": STR, "note": MAYBE_STR, "nonce": MAYBE_INT, "txid": MAYBE_STR,
        "mined_height": MAYBE_INT})))}),
    "wallets.list_refills": Operation({OK: _wrap("refills", array(obj({
        "id": STR, "chain": STR, "asset": STR, "amount": DIGITS, "status": STR,
        "required_approvals": INT, "destination": STR, "subject": OBJECT})))}),
    "wallets.approve_refill": Operation({OK: obj({
        "id": STR, "asset": STR, "amount": DIGITS, "destination": STR, "status": STR,
        "required_approvals": INT, "approvals": {}, "proposed_by": MAYBE_STR, "subject": OBJECT})}),
    "wallets.latest_reconciliation": Operation({OK: ref("Reconciliation")}),
    "wallets.run_reconciliation": Operation({CREATED: ref("Reconciliation")}),
}

_ID: Final[Schema] = _TRANSFER_ID
_AMOUNT: Final[Schema] = {"type": "string", "pattern": "^[1-9][0-9]{0,77}$"}
_CODE: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_ACCOUNT_ID: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}  # existence: at approval
REQUEST_COMPONENTS: Final[dict[str, Schema]] = {
    "TransferRequest": obj({"id": _ID}, {
        "kind": {"type": "string", "enum": ["single", "pending", "post", "void"]},
        "debit_account": _ACCOUNT_ID, "credit_account": _ACCOUNT_ID, "amount": _AMOUNT,
        "asset": STR, "pending_id": _ID,
        "timeout_s": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "code": _CODE,
        "reference": {"type": "string", "maxLength": 256},
    }) | {"additionalProperties": False},
    "TransferResolution": obj({"id": _ID}, {
        "amount": _AMOUNT, "code": _CODE, "reference": {"type": "string", "maxLength": 256},
    }) | {"additionalProperties": False},
    "TransferVoid": obj({"id": _ID}, {
        "code": _CODE, "reference": {"type": "string", "maxLength": 256},
    }) | {"additionalProperties": False},
}
# Methods that take no body: the document says so, and a body sent anyway is ignored.
NO_BODY: Final = frozenset({"GET", "DELETE"})
# Write operations that take no body (everything the path names is the whole request).
BODYLESS_WRITES: Final = frozenset({
    "access.revoke_api_key", "access.mfa_enrol", "access.disable_user", "access.revoke_approver_key",
    "audit.create_checkpoint", "audit.create_snapshot", "wallets.run_reconciliation",
    "withdrawals.remove_whitelist", "withdrawals.cancel_withdrawal", "exchange.advance",
    "exchange.cancel_order", "exchange.cancel_all_orders", "ledger.approve_proposal",
    "exchange_history.stream_token",
})
