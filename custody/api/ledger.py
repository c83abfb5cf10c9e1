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

from custody.api.auth import principal, secured
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
    ResultStatus,
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


def _single_result(result: TransferResult) -> ResponseReturnValue:
    if result.code is not None:
        raise LedgerError(result.code, result.message)
    status = 201 if result.status is ResultStatus.CREATED else 200
    return jsonify(result_json(result)), status


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


@bp.post("/transfers")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def create_transfer() -> ResponseReturnValue:
    """Submit one transfer (single or pending, or post/void with ``pending_id``)."""
    return _single_result(ledger().submit([parse_transfer(json_object())])[0])


@bp.post("/transfers/batch")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def create_batch() -> ResponseReturnValue:
    """Submit up to MAX_BATCH transfers; ``linked: true`` makes them all-or-nothing."""
    body = json_object()
    reject_unknown(body, {"transfers", "linked"})
    items = body.get("transfers")
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"transfers must be a list of 1..{MAX_BATCH} transfer objects")
    requests = [parse_transfer(item, f"transfers[{i}]") for i, item in enumerate(items)]
    linked = field_bool(body, "linked")
    results = ledger().submit(requests, linked=linked)
    failed = [r for r in results if not r.ok]
    status = 201 if not failed else (422 if linked or len(failed) == len(results) else 207)
    return jsonify({"linked": linked, "results": [result_json(r) for r in results]}), status


def _resolve(pending_id: str, kind: TransferKind) -> ResponseReturnValue:
    body = json_object()
    reject_unknown(body, RESOLVE_FIELDS if kind is TransferKind.POST else RESOLVE_FIELDS - {"amount"})
    resolution = TransferRequest(
        id=field_str(body, "id") or "", kind=kind, pending_id=pending_id,
        amount=field_amount(body, "amount", required=False),
        code=field_int(body, "code", required=False, default=0) or 0,
        reference=field_str(body, "reference", required=False, default="") or "",
    )
    return _single_result(ledger().submit([resolution])[0])


@bp.post("/transfers/<pending_id>/post")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def post_pending(pending_id: str) -> ResponseReturnValue:
    """Post all (or ``amount`` of) a pending transfer."""
    return _resolve(pending_id, TransferKind.POST)


@bp.post("/transfers/<pending_id>/void")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def void_pending(pending_id: str) -> ResponseReturnValue:
    """Void a pending transfer, releasing its hold."""
    return _resolve(pending_id, TransferKind.VOID)


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
