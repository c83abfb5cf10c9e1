"""Audit endpoints: signed checkpoints, inclusion and consistency proofs, keys, proof of reserves.

Proof documents have the shapes in docs/ledger-export.md and
docs/proof-of-reserves.md, so ``strongroom-audit verify-proof`` and
``verify-liability`` check what these endpoints return, offline.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from custody.api.auth import principal, secured
from custody.api.errors import ApiError, RequestCode, error_body
from custody.api.request import query_int
from custody.audit.checkpoint import Checkpoint
from custody.audit.codes import AuditCode, AuditError
from custody.audit.export import keys_document
from custody.audit.reserves import ReservesService, reserves_report
from custody.audit.service import CHECKPOINT_LIST_MAX, AuditService
from custody.keystore import KeystoreError
from custody.ledger.service import wall_clock_ms
from policies.api_key import Scope
from policies.roles import Permission, can_read_account

bp = Blueprint("audit", __name__, url_prefix="/api/v1/audit")

INT_QUERY_MAX = 2**63 - 1
AUDIT_STATUS = {
    AuditCode.NO_NEW_ENTRIES: 409,
    AuditCode.CHECKPOINT_CONFLICT: 409,
    AuditCode.CHECKPOINT_NOT_FOUND: 404,
    AuditCode.ENTRY_NOT_FOUND: 404,
    AuditCode.SNAPSHOT_NOT_FOUND: 404,
    AuditCode.LIABILITY_NOT_FOUND: 404,
    AuditCode.CORRUPT_JOURNAL: 500,
}


def audit() -> AuditService:
    """Return the app's audit service, created on first use from the app's ledger and keystore."""
    ext = current_app.extensions
    service = ext.get("strongroom.audit")
    if service is None:
        service = ext.setdefault("strongroom.audit", AuditService(
            ext["strongroom.sessions"], ext["strongroom.ledger"], ext["strongroom.keystore"],
            clock=current_app.config.get("CLOCK") or wall_clock_ms))
    assert isinstance(service, AuditService)
    return service


def reserves() -> ReservesService:
    """Return the app's proof-of-reserves service."""
    ext = current_app.extensions
    service = ext.get("strongroom.reserves")
    if service is None:
        service = ext.setdefault("strongroom.reserves", ReservesService(
            ext["strongroom.sessions"], audit(), clock=current_app.config.get("CLOCK") or wall_clock_ms))
    assert isinstance(service, ReservesService)
    return service


@bp.errorhandler(AuditError)
def _audit_error(exc: AuditError) -> ResponseReturnValue:
    return jsonify(error_body(exc.code, exc.message)), AUDIT_STATUS.get(exc.code, 400)


@bp.errorhandler(KeystoreError)
def _keystore_error(exc: KeystoreError) -> ResponseReturnValue:
    # The checkpoint key is ours, not the caller's: any keystore failure is a service problem.
    return jsonify(exc.to_dict()), 503


def checkpoint_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """Render a checkpoint with its identity hash."""
    return {"hash": checkpoint.hash(), "checkpoint": checkpoint.to_dict()}


@bp.get("/keys")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def keys() -> ResponseReturnValue:
    """Return the checkpoint public keys in the keys.json format auditors pin."""
    return jsonify(keys_document(audit().public_keys()))


@bp.post("/checkpoints")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def create_checkpoint() -> ResponseReturnValue:
    """Sign a checkpoint over every entry up to the current head."""
    return jsonify(checkpoint_json(audit().create_checkpoint())), 201


@bp.get("/checkpoints")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def list_checkpoints() -> ResponseReturnValue:
    """List checkpoints numbered above ``after``, oldest first."""
    found = audit().list_checkpoints(query_int("after", 0, low=0, high=INT_QUERY_MAX),
                                     query_int("limit", 100, low=1, high=CHECKPOINT_LIST_MAX))
    return jsonify({"checkpoints": [checkpoint_json(c) for c in found]})


@bp.get("/checkpoints/latest")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def latest_checkpoint() -> ResponseReturnValue:
    """Return the newest checkpoint."""
    latest = audit().latest_checkpoint()
    if latest is None:
        raise AuditError(AuditCode.CHECKPOINT_NOT_FOUND, "no checkpoint has been written yet")
    return jsonify(checkpoint_json(latest))


@bp.get("/checkpoints/<int:number>")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def get_checkpoint(number: int) -> ResponseReturnValue:
    """Return checkpoint ``number``."""
    return jsonify(checkpoint_json(audit().get_checkpoint(number)))


def _tree_size(size_param: str, checkpoint_param: str) -> int:
    """Read a tree size given directly or as a checkpoint number (default: the newest checkpoint)."""
    if size_param in request.args and checkpoint_param in request.args:
        raise ApiError(RequestCode.INVALID_FIELD, f"give {size_param} or {checkpoint_param}, not both")
    if size_param in request.args:
        return query_int(size_param, 0, low=1, high=INT_QUERY_MAX)
    if checkpoint_param in request.args:
        return audit().get_checkpoint(query_int(checkpoint_param, 0, low=1, high=INT_QUERY_MAX)).tree_size
    latest = audit().latest_checkpoint()
    if latest is None:
        raise AuditError(AuditCode.CHECKPOINT_NOT_FOUND, f"no checkpoint yet: give {size_param}")
    return latest.tree_size


@bp.get("/proofs/inclusion")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def inclusion_proof() -> ResponseReturnValue:
    """Prove entry ``seq`` is in the tree of ``tree_size`` entries (or of ``checkpoint``)."""
    if "seq" not in request.args:
        raise ApiError(RequestCode.INVALID_FIELD, "query parameter seq is required")
    seq = query_int("seq", 0, low=1, high=INT_QUERY_MAX)
    return jsonify(audit().inclusion_proof(seq, _tree_size("tree_size", "checkpoint")))


@bp.get("/proofs/consistency")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def consistency_proof() -> ResponseReturnValue:
    """Prove the tree of ``second`` entries extends the tree of ``first`` (sizes or checkpoints)."""
    first = _tree_size("first", "first_checkpoint")
    second = _tree_size("second", "second_checkpoint")
    return jsonify(audit().consistency_proof(first, second))


@bp.post("/reserves/snapshots")
@secured(scope=Scope.TRADE, admin_only=True, mfa=False)
def create_snapshot() -> ResponseReturnValue:
    """Snapshot and sign liabilities (Merkle-sum roots) and reserves at the current head."""
    return jsonify(reserves().create_snapshot()), 201


@bp.get("/reserves/snapshots/latest")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def latest_snapshot() -> ResponseReturnValue:
    """Return the newest reserves snapshot."""
    return jsonify(reserves().get_snapshot())


@bp.get("/reserves/snapshots/<int:snapshot_id>")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def get_snapshot(snapshot_id: int) -> ResponseReturnValue:
    """Return one reserves snapshot."""
    return jsonify(reserves().get_snapshot(snapshot_id))


@bp.get("/reserves/snapshots/<int:snapshot_id>/proof")
@secured(Permission.AUDIT_READ, Permission.LEDGER_READ_OWN, scope=Scope.READ)
def liability_proof(snapshot_id: int) -> ResponseReturnValue:
    """Return one user's liability inclusion proof (``?owner=&asset=``).

    Auditors may fetch anyone's proof; a trader only their own (another user's
    proof answers 404, as if it did not exist, so balances never leak).
    """
    owner, asset = request.args.get("owner"), request.args.get("asset")
    if not owner or not asset:
        raise ApiError(RequestCode.INVALID_FIELD, "query parameters owner and asset are required")
    caller = principal()
    if not can_read_account(caller.user.roles, caller.username, owner):
        raise ApiError(RequestCode.NOT_FOUND, f"no liability proof for {owner[:64]} {asset[:16]}", 404)
    return jsonify(reserves().liability_proof(snapshot_id, owner, asset))


@bp.get("/reserves/report")
@secured(Permission.AUDIT_READ, scope=Scope.READ)
def reserves_report_view() -> ResponseReturnValue:
    """Return reserves / liabilities per asset from the newest snapshot (or ``?snapshot=``)."""
    snapshot_id = query_int("snapshot", 0, low=1, high=INT_QUERY_MAX) if "snapshot" in request.args else None
    snapshot = reserves().get_snapshot(snapshot_id)
    return jsonify({"snapshot": snapshot["id"], "ledger_seq": snapshot["ledger_seq"],
                    "assets": reserves_report(snapshot)})
