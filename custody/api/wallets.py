"""Wallet endpoints: wallets and addresses, outgoing transactions, refills, reconciliation.

Reads need ``wallet.read`` (treasury, admin, auditor); the reconciliation
report is also open to ``audit.read``; approving a refill needs
``wallet.manage`` with MFA and the approver's signed approval. Running a
reconciliation needs a configured chain: ``app.extensions["strongroom.chains"]``
maps each chain name to its runtime (built by the composition root,
strongroom.runtimes; this module needs only `ChainServices` of it). Endpoints about one chain take a
``chain`` query parameter (``ethereum`` by default); lists take it as an
optional filter.
"""

from __future__ import annotations

from typing import Any, Protocol

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from custody.api.access import decode_approval
from custody.api.auth import principal, secured
from custody.api.errors import ApiError, RequestCode, error_body
from custody.api.request import json_object, reject_unknown
from custody.api.schema import accepts
from custody.api.services import app_sessions
from custody.chains.adapter import ChainError
from custody.reconciliation import Reconciler, report_from_row
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import ChainTransaction, ReconciliationRun, RefillProposal, Wallet, WalletAddress
from custody.wallets.treasury import Treasury, refill_subject
from custody.withdrawals.service import subject_json
from policies.api_key import Scope
from policies.approval import Approval
from policies.roles import Permission

bp = Blueprint("wallets", __name__, url_prefix="/api/v1/wallets")
LIST_LIMIT = 200
DEFAULT_CHAIN = "ethereum"
CHAIN_NAME_MAX_LEN = 16
KNOWN_CHAINS = ("ethereum", "bitcoin")
REFILL_APPROVAL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["approval"],
    "properties": {"approval": {"type": "string", "maxLength": 8192}},
}


@bp.errorhandler(WalletError)
def _wallet_error(exc: WalletError) -> ResponseReturnValue:
    return jsonify(error_body(exc.code, exc.message)), exc.status


@bp.errorhandler(ChainError)
def _chain_error(exc: ChainError) -> ResponseReturnValue:
    return jsonify(error_body(exc.code, exc.message)), 502


def _chain(default: str | None = DEFAULT_CHAIN) -> str | None:
    """Return the ``chain`` query parameter (``default`` when absent)."""
    chain = request.args.get("chain", default)
    # An unknown name is the caller's mistake (400); a known chain without a node is ours (503).
    if chain is not None and chain not in KNOWN_CHAINS:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"chain was {chain[:CHAIN_NAME_MAX_LEN]!r}, must be one of {', '.join(KNOWN_CHAINS)}")
    return chain


class ChainServices(Protocol):
    """What these endpoints use of one chain's runtime (strongroom.runtimes provides it)."""

    @property
    def treasury(self) -> Treasury: ...

    @property
    def reconciler(self) -> Reconciler: ...


def _runtime(chain: str) -> ChainServices:
    found = current_app.extensions.get("strongroom.chains")
    runtimes: dict[str, ChainServices] = found or {}
    runtime = runtimes.get(chain)
    if runtime is None:
        variable = "STRONGROOM_BTC_RPC_URL" if chain == "bitcoin" else "STRONGROOM_ETH_RPC_URL"
        raise WalletError(WalletCode.CHAIN_NOT_CONFIGURED,
                          f"no {chain} node is configured: set {variable} "
                          f"(configured: {', '.join(runtimes) or 'none'})")
    return runtime


@bp.get("")
@secured(Permission.WALLET_READ, scope=Scope.READ, mfa=False)
def list_wallets() -> ResponseReturnValue:
    """List wallets with their addresses and BIP32 paths (never seeds)."""
    chain = _chain(None)
    query = select(Wallet).order_by(Wallet.id)
    if chain is not None:
        query = query.where(Wallet.chain == chain)
    with app_sessions()() as session:
        wallets = session.scalars(query).all()
        addresses = session.scalars(select(WalletAddress).where(WalletAddress.owner.is_(None))).all()
    by_wallet: dict[int, list[dict[str, Any]]] = {}
    for a in addresses:
        by_wallet.setdefault(a.wallet_id, []).append({"address": a.address, "path": a.path})
    return jsonify({"wallets": [{
        "name": w.name, "chain": w.chain, "temperature": w.temperature, "account_path": w.account_path,
        "account_xpub": w.account_xpub, "deposit_addresses_issued": w.next_index if w.temperature == "deposit"
        else None, "addresses": by_wallet.get(w.id, [])} for w in wallets]})


@bp.get("/transactions")
@secured(Permission.WALLET_READ, scope=Scope.READ, mfa=False)
def list_transactions() -> ResponseReturnValue:
    """List outgoing transactions (withdrawals, sweeps, consolidations), newest first."""
    chain = _chain(None)
    query = select(ChainTransaction).order_by(ChainTransaction.created_ms.desc()).limit(LIST_LIMIT)
    if chain is not None:
        query = query.where(ChainTransaction.chain == chain)
    with app_sessions()() as session:
        rows = session.scalars(query).all()
    return jsonify({"transactions": [{
        "id": r.id, "chain": r.chain, "purpose": r.purpose, "asset": r.asset, "amount": str(r.amount_minor),
        "destination": r.destination, "status": r.status, "note": r.note, "nonce": r.nonce,
        "txid": r.mined_txid or r.current_txid, "mined_height": r.mined_height} for r in rows]})


@bp.get("/refills")
@secured(Permission.WALLET_READ, scope=Scope.READ, mfa=False)
def list_refills() -> ResponseReturnValue:
    """List cold -> hot refill proposals."""
    chain = _chain(None)
    query = select(RefillProposal).order_by(RefillProposal.created_ms.desc()).limit(LIST_LIMIT)
    if chain is not None:
        query = query.where(RefillProposal.chain == chain)
    with app_sessions()() as session:
        rows = session.scalars(query).all()
    return jsonify({"refills": [{
        "id": r.id, "chain": r.chain, "asset": r.asset, "amount": str(r.amount_minor), "status": r.status,
        "required_approvals": r.required_approvals, "destination": r.destination,
        "subject": _refill_subject(r)} for r in rows]})


def _refill_subject(row: RefillProposal) -> dict[str, object]:
    return subject_json(refill_subject(row.id, row.asset, row.amount_minor, row.destination))


@bp.post("/refills/<proposal_id>/approve")
@secured(Permission.WALLET_MANAGE, scope=Scope.WITHDRAW)
@accepts(REFILL_APPROVAL_SCHEMA)
def approve_refill(proposal_id: str) -> ResponseReturnValue:
    """Approve a refill proposal with your signed approval of its ``subject`` (base64, docs/approvals.md)."""
    body = json_object()
    reject_unknown(body, {"approval"})
    approval = Approval.from_bytes(decode_approval(body))
    with app_sessions()() as session:
        proposal = session.get(RefillProposal, proposal_id)
    if proposal is None:
        raise WalletError(WalletCode.PROPOSAL_NOT_FOUND,
                          f"refill proposal {proposal_id[:80]!r} does not exist")
    view = _runtime(proposal.chain).treasury.approve_refill(proposal_id, principal().username, approval)
    return jsonify(view.to_json())


@bp.get("/reconciliation/latest")
@secured(Permission.WALLET_READ, Permission.AUDIT_READ, scope=Scope.READ, mfa=False)
def latest_reconciliation() -> ResponseReturnValue:
    """Return the newest reconciliation report of ``chain`` (default ethereum)."""
    chain = _chain()
    with app_sessions()() as session:
        row = session.scalar(select(ReconciliationRun).where(ReconciliationRun.chain == chain)
                             .order_by(ReconciliationRun.id.desc()).limit(1))
    if row is None:
        raise WalletError(WalletCode.NO_RECONCILIATION, f"no reconciliation of {chain} has run yet")
    return jsonify(report_from_row(row).to_json())


@bp.post("/reconciliation")
@secured(Permission.WALLET_MANAGE, scope=Scope.READ, mfa=False)
def run_reconciliation() -> ResponseReturnValue:
    """Run a reconciliation now against ``chain`` (default ethereum), which must be configured."""
    chain = _chain()
    assert chain is not None
    return jsonify(_runtime(chain).reconciler.run().to_json()), 201
