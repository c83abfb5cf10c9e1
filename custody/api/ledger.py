"""Ledger endpoints: accounts, transfers (single, batch, two-phase), balances, history.

Amounts travel as strings of decimal digits (JSON numbers lose precision past
2**53 in many clients); integers are accepted on input too.

Access: reads need ``ledger.read_own`` (traders: only accounts they own;
another owner's account answers 404 as if it did not exist) or
``ledger.read_all`` (auditors, compliance). Raw writes (accounts, transfers)
are internal operations for the admin role only: users move money through
withdrawals and trading, never by posting ledger transfers themselves.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.access.ledger_ops import EXECUTED, LIST_MAX, PROPOSAL_STATES, ProposalRefused
from custody.api.auth import json_response, principal, secured, services
from custody.api.errors import ApiError, RequestCode
from custody.api.request import (
    field_amount,
    field_bool,
    field_int,
    field_str,
    json_object,
    query_int,
    reject_unknown,
)
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import Entry, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import (
    HISTORY_PAGE_MAX,
    MAX_BATCH,
    AccountView,
    Ledger,
    TransferResult,
)
from policies.api_key import Scope
from policies.results import PolicyError, ResultCode
from policies.roles import Permission, can_read_account

READ = (Permission.LEDGER_READ_OWN, Permission.LEDGER_READ_ALL)

bp = Blueprint("ledger", __name__, url_prefix="/api/v1/ledger")

TRANSFER_FIELDS = {"id", "kind", "debit_account", "credit_account", "amount", "asset",
                   "pending_id", "timeout_s", "code", "reference"}
RESOLVE_FIELDS = {"id", "amount", "code", "reference"}


def ledger() -> Ledger:
    """Return the app's ledger service."""
    service: Ledger = current_app.extensions["strongroom.ledger"]
    return service


def account_json(account: AccountView) -> dict[str, Any]:
    """Render an account with its balances."""
    b = account.balance
    return {
        "id": account.id, "owner": account.owner, "asset": account.asset,
        "kind": account.kind.value, "flags": int(account.flags), "created_ms": account.created_ms,
        "balance": {
            "debits_pending": str(b.debits_pending), "debits_posted": str(b.debits_posted),
            "credits_pending": str(b.credits_pending), "credits_posted": str(b.credits_posted),
        },
        "last_seq": account.last_seq,
    }


def entry_json(entry: Entry) -> dict[str, Any]:
    """Render a journal entry (its canonical fields)."""
    return entry.to_dict()


def result_json(result: TransferResult) -> dict[str, Any]:
    """Render one transfer result of a submission."""
    body: dict[str, Any] = {"index": result.index, "id": result.id, "status": result.status.value}
    if result.entry is not None:
        body["transfer"] = entry_json(result.entry)
    if result.code is not None:
        body.update(code=int(result.code), error=result.code.error, message=result.message)
    return body


def parse_transfer(body: Any, where: str = "body") -> TransferRequest:
    """Parse a transfer request object strictly."""
    if not isinstance(body, dict):
        raise ApiError(RequestCode.INVALID_FIELD, f"{where} must be a JSON object")
    reject_unknown(body, TRANSFER_FIELDS, where)
    kind_text = field_str(body, "kind", required=False, default="single")
    try:
        kind = TransferKind(kind_text or "")
    except ValueError:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"{where}.kind was {kind_text!r:.40}, must be single, pending, post or void") from None
    return TransferRequest(
        id=field_str(body, "id") or "",
        kind=kind,
        debit_account=field_int(body, "debit_account", required=False),
        credit_account=field_int(body, "credit_account", required=False),
        amount=field_amount(body, "amount", required=False),
        asset=field_str(body, "asset", required=False),
        pending_id=field_str(body, "pending_id", required=False),
        timeout_s=field_int(body, "timeout_s", required=False, default=0) or 0,
        code=field_int(body, "code", required=False, default=0) or 0,
        reference=field_str(body, "reference", required=False, default="") or "",
    )


def readable_account(account_id: int) -> AccountView:
    """Return the account if the caller may read it; otherwise "unknown account"."""
    caller = principal()
    try:
        account = ledger().get_account(account_id)
    except LedgerError:
        account = None
    if account is None or not can_read_account(caller.user.roles, caller.username, account.owner):
        raise LedgerError(LedgerCode.UNKNOWN_ACCOUNT, f"account {account_id} does not exist")
    return account


@bp.post("/accounts")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def create_account() -> ResponseReturnValue:
    """Create an account for an owner, asset and kind."""
    body = json_object()
    reject_unknown(body, {"owner", "asset", "kind", "flags"})
    account = ledger().create_account(
        field_str(body, "owner") or "", field_str(body, "asset") or "",
        field_str(body, "kind") or "", field_int(body, "flags", required=False))
    return jsonify(account_json(account)), 201


@bp.get("/accounts")
@secured(*READ, scope=Scope.READ)
def list_accounts() -> ResponseReturnValue:
    """List accounts, optionally of one owner (``?owner=``); traders see only their own."""
    caller = principal()
    owner = request.args.get("owner")
    if not can_read_account(caller.user.roles, caller.username, owner or ""):
        if owner not in (None, caller.username):
            raise PolicyError(ResultCode.PERMISSION_DENIED, "you may only list your own accounts")
        owner = caller.username
    return jsonify({"accounts": [account_json(a) for a in ledger().list_accounts(owner)]})


@bp.get("/accounts/<int:account_id>")
@secured(*READ, scope=Scope.READ)
def get_account(account_id: int) -> ResponseReturnValue:
    """Return one account with balances."""
    return jsonify(account_json(readable_account(account_id)))


@bp.get("/accounts/<int:account_id>/history")
@secured(*READ, scope=Scope.READ)
def account_history(account_id: int) -> ResponseReturnValue:
    """Return an account's entries after ``cursor`` (a sequence number), oldest first."""
    readable_account(account_id)
    page = ledger().history(
        account_id,
        after_seq=query_int("cursor", 0, low=0, high=2**63 - 1),
        limit=query_int("limit", 100, low=1, high=HISTORY_PAGE_MAX),
    )
    return jsonify({
        "entries": [entry_json(e) for e in page.entries],
        "next_cursor": None if page.next_cursor is None else str(page.next_cursor),
    })


# Every raw write below moves money: one admin proposes it (202, nothing applied yet), another
# admin approves it with MFA (POST /ledger/proposals/{id}/approve). No single person moves money.


def _proposed(requests: list[TransferRequest], reason: str) -> ResponseReturnValue:
    try:
        view = services().ledger_ops.propose(principal().username, requests, reason)
    except ProposalRefused as refused:
        failed = next(r for r in refused.results if r.code is not None)
        if len(requests) == 1:
            raise LedgerError(failed.code, failed.message) from None  # type: ignore[arg-type]
        # A batch answers with every item, as the ledger would (nothing was stored).
        results = [result_json(r) if r.code is not None else
                   {"index": r.index, "id": r.id, "status": "not_applied"} for r in refused.results]
        return json_response({"linked": True, "results": results}, 422)
    return json_response({"proposal": view.to_json()}, 202)


@bp.post("/transfers")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True, moves_money=True)
def create_transfer() -> ResponseReturnValue:
    """Propose one transfer (single, pending, or post/void with ``pending_id``); another admin applies it."""
    transfer = parse_transfer(json_object())
    return _proposed([transfer], f"manual transfer {transfer.id}")


@bp.post("/transfers/batch")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True, moves_money=True)
def create_batch() -> ResponseReturnValue:
    """Propose up to MAX_BATCH transfers, applied all-or-nothing when another admin approves."""
    body = json_object()
    reject_unknown(body, {"transfers", "linked"})
    items = body.get("transfers")
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"transfers must be a list of 1..{MAX_BATCH} transfer objects")
    requests = [parse_transfer(item, f"transfers[{i}]") for i, item in enumerate(items)]
    field_bool(body, "linked")  # Accepted for compatibility: a proposal is always all-or-nothing.
    return _proposed(requests, f"manual batch of {len(requests)} transfers")


def _resolve(pending_id: str, kind: TransferKind) -> ResponseReturnValue:
    body = json_object()
    reject_unknown(body, RESOLVE_FIELDS if kind is TransferKind.POST else RESOLVE_FIELDS - {"amount"})
    resolution = TransferRequest(
        id=field_str(body, "id") or "", kind=kind, pending_id=pending_id,
        amount=field_amount(body, "amount", required=False),
        code=field_int(body, "code", required=False, default=0) or 0,
        reference=field_str(body, "reference", required=False, default="") or "",
    )
    return _proposed([resolution], f"manual {kind.value} of {pending_id[:80]}")


@bp.post("/transfers/<pending_id>/post")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True, moves_money=True)
def post_pending(pending_id: str) -> ResponseReturnValue:
    """Propose posting all (or ``amount`` of) a pending transfer."""
    return _resolve(pending_id, TransferKind.POST)


@bp.post("/transfers/<pending_id>/void")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True, moves_money=True)
def void_pending(pending_id: str) -> ResponseReturnValue:
    """Propose voiding a pending transfer, releasing its hold."""
    return _resolve(pending_id, TransferKind.VOID)


@bp.get("/proposals")
@secured(scope=Scope.READ, admin_only=True, mfa=False)
def list_proposals() -> ResponseReturnValue:
    """List manual ledger operations, newest first (``?state=proposed`` for those awaiting approval)."""
    state = request.args.get("state")
    if state is not None and state not in PROPOSAL_STATES:
        raise ApiError(RequestCode.INVALID_FIELD, f"state must be one of {', '.join(PROPOSAL_STATES)}")
    views = services().ledger_ops.list(state, query_int("limit", 100, low=1, high=LIST_MAX))
    return json_response({"proposals": [v.to_json() for v in views]})


@bp.get("/proposals/<proposal_id>")
@secured(scope=Scope.READ, admin_only=True, mfa=False)
def get_proposal(proposal_id: str) -> ResponseReturnValue:
    """Return one manual ledger operation, its state and, once decided, the ledger's answers."""
    return json_response({"proposal": services().ledger_ops.get(proposal_id).to_json()})


@bp.post("/proposals/<proposal_id>/approve")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True, moves_money=True)
def approve_proposal(proposal_id: str) -> ResponseReturnValue:
    """Approve another admin's proposal: its transfers are applied, all or none."""
    view, _ = services().ledger_ops.approve(principal().username, proposal_id)
    body = view.to_json()
    status = 200 if view.state == EXECUTED else 422
    return json_response({"proposal": body, "results": body["results"]}, status)


@bp.post("/proposals/<proposal_id>/reject")
@secured(scope=Scope.TRADE, admin_only=True, mfa=True)
def reject_proposal(proposal_id: str) -> ResponseReturnValue:
    """Reject a proposal; the ledger is not touched."""
    body = json_object()
    reject_unknown(body, {"reason"})
    reason = field_str(body, "reason", required=False, default="") or ""
    return json_response({"proposal": services().ledger_ops.reject(principal().username, proposal_id,
                                                                   reason).to_json()})


@bp.get("/transfers/<transfer_id>")
@secured(*READ, scope=Scope.READ)
def get_transfer(transfer_id: str) -> ResponseReturnValue:
    """Return one transfer by its caller-supplied id (if it touches an account you may read)."""
    caller = principal()
    entry = ledger().get_transfer(transfer_id)
    owners = {ledger().get_account(a).owner for a in (entry.debit_account, entry.credit_account)}
    if not any(can_read_account(caller.user.roles, caller.username, o) for o in owners):
        raise LedgerError(LedgerCode.TRANSFER_NOT_FOUND, f"transfer {transfer_id[:120]} does not exist")
    return jsonify(entry_json(entry))
