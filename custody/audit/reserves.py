"""Proof of reserves: signed snapshots of user liabilities (Merkle-sum trees) and wallet reserves.

Liabilities per user and asset: the posted credit balance of the user's
available, held and margin accounts (funds held for a pending withdrawal are
still owed; unconfirmed deposits are not yet). Reserves per asset: the posted
debit balance of the hot and cold wallet accounts, until the wallets issue
adds on-chain addresses. docs/proof-of-reserves.md specifies the formats.

A snapshot is taken at the ledger sequence of a signed checkpoint (one is
written first if the head is not covered), names that checkpoint and the
previous snapshot by hash, and is signed, so the auditor can recompute every
leaf sum from the export and users can pin what they were shown.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.audit.codes import AuditCode, AuditError
from custody.audit.liabilities import (
    LIABILITY_PROOF_FORMAT,
    LIABILITY_PROOF_VERSION,
    SALT_BYTES,
    SumTree,
    liability_leaf,
)
from custody.audit.models import AuditLiabilityLeaf, AuditLiabilitySnapshot
from custody.audit.service import AuditService
from custody.audit.snapshots import (
    FIRST_PREV_SNAPSHOT,
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    signing_message,
    snapshot_hash,
)
from custody.ledger.entry import AccountKind, TransferKind, canonical_json
from custody.ledger.models import LedgerAccount, LedgerHead, LedgerTransfer
from custody.ledger.service import HEAD_ID, wall_clock_ms

USER_KINDS = frozenset({AccountKind.USER_AVAILABLE, AccountKind.USER_HELD, AccountKind.USER_MARGIN})
WALLET_KINDS = frozenset({AccountKind.HOT_WALLET, AccountKind.COLD_WALLET})
RATIO_DECIMALS = 4


@dataclass(frozen=True, slots=True)
class _Leaf:
    owner: str
    salt: bytes
    balance: int


@dataclass(frozen=True, slots=True)
class _AccountAt:
    """An account's terms and its posted balance at the snapshot's sequence (credit-normal)."""

    id: int
    owner: str
    asset: str
    kind: str
    credit_balance: int


class ReservesService:
    """Create signed proof-of-reserves snapshots and serve per-user liability proofs."""

    def __init__(
        self, sessions: sessionmaker[Session], audit: AuditService,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._clock = clock

    def create_snapshot(self) -> dict[str, object]:
        """Snapshot liabilities and reserves at a signed checkpoint, sign it, store it with its leaves."""
        checkpoint = self._audit.checkpoint_at_head()
        version = self._audit.signing_key_version()
        with self._sessions.begin() as session:
            # An exclusive lock on the head serialises snapshots (one chain, no forks) and
            # keeps writers out while balances are rolled back to the checkpoint's sequence.
            head = session.scalar(select(LedgerHead).where(LedgerHead.id == HEAD_ID).with_for_update())
            assert head is not None, "ledger_head row is missing"
            accounts = _accounts_at(session, checkpoint.last_seq)
            leaves, clamped = _liability_leaves(accounts)
            prev_row = session.scalar(select(AuditLiabilitySnapshot)
                                      .order_by(AuditLiabilitySnapshot.id.desc()).limit(1))
            prev = FIRST_PREV_SNAPSHOT if prev_row is None else snapshot_hash(json.loads(prev_row.record))
            row = AuditLiabilitySnapshot(id=1 if prev_row is None else prev_row.id + 1,
                                         created_ms=self._clock(), ledger_seq=checkpoint.last_seq,
                                         record="")
            session.add(row)
            session.flush()
            liabilities = {}
            for asset, asset_leaves in sorted(leaves.items()):
                root = SumTree([liability_leaf(x.salt, x.owner, x.balance) for x in asset_leaves]).root()
                liabilities[asset] = {"root": root.hash.hex(), "total": str(root.total),
                                      "leaves": len(asset_leaves), "clamped_accounts": clamped.get(asset, 0)}
                session.add_all(AuditLiabilityLeaf(snapshot_id=row.id, asset=asset, position=i,
                                                   owner=x.owner, salt=x.salt.hex(), balance=x.balance)
                                for i, x in enumerate(asset_leaves))
            body: dict[str, object] = {
                "format": SNAPSHOT_FORMAT, "v": SNAPSHOT_VERSION, "id": row.id,
                "created_ms": row.created_ms, "ledger_seq": checkpoint.last_seq,
                "ledger_head": checkpoint.head_hash, "checkpoint": checkpoint.hash(),
                "prev_snapshot": prev, "liabilities": liabilities, "reserves": _reserves(accounts),
                "key_name": self._audit.key_name, "key_version": version,
            }
            signature = self._audit.sign(signing_message(body), version)
            record = {**body, "signature": signature.hex()}
            row.record = canonical_json(record).decode("ascii")
        return record

    def get_snapshot(self, snapshot_id: int | None = None) -> dict[str, object]:
        """Return snapshot ``snapshot_id`` (the newest by default)."""
        with self._sessions() as session:
            if snapshot_id is None:
                row = session.scalar(select(AuditLiabilitySnapshot)
                                     .order_by(AuditLiabilitySnapshot.id.desc()).limit(1))
            else:
                row = session.get(AuditLiabilitySnapshot, snapshot_id)
            if row is None:
                raise AuditError(AuditCode.SNAPSHOT_NOT_FOUND,
                                 f"reserves snapshot {snapshot_id or '(latest)'} does not exist")
            record: dict[str, object] = json.loads(row.record)
            return record

    def liability_proof(self, snapshot_id: int, owner: str, asset: str) -> dict[str, object]:
        """Return ``owner``'s liability proof in ``asset`` from snapshot ``snapshot_id``."""
        snapshot = self.get_snapshot(snapshot_id)
        with self._sessions() as session:
            rows = session.scalars(select(AuditLiabilityLeaf).where(
                AuditLiabilityLeaf.snapshot_id == snapshot_id, AuditLiabilityLeaf.asset == asset)
                .order_by(AuditLiabilityLeaf.position)).all()
        index = next((i for i, r in enumerate(rows) if r.owner == owner), None)
        if index is None:
            raise AuditError(AuditCode.LIABILITY_NOT_FOUND,
                             f"{owner} has no {asset} liability in reserves snapshot {snapshot_id}")
        tree = SumTree([liability_leaf(bytes.fromhex(r.salt), r.owner, r.balance) for r in rows])
        public_key = next((k.public_key for k in self._audit.public_keys()
                           if k.version == snapshot["key_version"]), None)
        return {
            "format": LIABILITY_PROOF_FORMAT, "version": LIABILITY_PROOF_VERSION, "asset": asset,
            "user_id": owner,
            "salt": rows[index].salt, "balance": str(rows[index].balance), "leaf_index": index,
            "tree_size": len(rows), "path": [node.to_dict() for node in tree.proof(index)],
            "root": tree.root().to_dict(), "snapshot": snapshot,
            "public_key": None if public_key is None else public_key.hex(),
        }


def _accounts_at(session: Session, seq: int) -> list[_AccountAt]:
    """Return every account open at ``seq`` with its posted balance then.

    Only single and post entries change posted balances, so the entries after
    ``seq`` are undone from the current totals (the caller holds the head lock).
    """
    table = LedgerTransfer.__table__
    later = session.execute(
        select(table.c.kind, table.c.debit_account_id, table.c.credit_account_id, table.c.amount)
        .where(table.c.seq > seq, table.c.kind.in_(
            [TransferKind.SINGLE.value, TransferKind.POST.value, TransferKind.OPEN.value])))
    opened_later: set[int] = set()
    delta: dict[int, int] = {}
    for kind, debit, credit, amount in later:
        if kind == TransferKind.OPEN.value:
            opened_later.add(debit)
            continue
        delta[credit] = delta.get(credit, 0) + int(amount)
        delta[debit] = delta.get(debit, 0) - int(amount)
    rows = session.scalars(select(LedgerAccount).order_by(LedgerAccount.id)).all()
    return [_AccountAt(r.id, r.owner, r.asset, r.kind,
                       r.credits_posted - r.debits_posted - delta.get(r.id, 0))
            for r in rows if r.id not in opened_later]


def _liability_leaves(
    accounts: Sequence[_AccountAt],
) -> tuple[dict[str, list[_Leaf]], dict[str, int]]:
    """Return per asset the leaves (in a salted, hence unguessable, order) and clamped-account counts."""
    owed: dict[tuple[str, str], int] = {}
    clamped: dict[str, int] = {}
    for account in accounts:
        if account.kind not in USER_KINDS:
            continue
        balance = account.credit_balance
        if balance < 0:
            # A negative user account is a debt to us; it must never offset what we owe others.
            clamped[account.asset] = clamped.get(account.asset, 0) + 1
            balance = 0
        key = (account.asset, account.owner)
        owed[key] = owed.get(key, 0) + balance
    leaves: dict[str, list[_Leaf]] = {}
    for (asset, owner), balance in owed.items():
        leaves.setdefault(asset, []).append(_Leaf(owner, secrets.token_bytes(SALT_BYTES), balance))
    for asset_leaves in leaves.values():
        asset_leaves.sort(key=lambda x: liability_leaf(x.salt, x.owner, x.balance).hash)
    return leaves, clamped


def _reserves(accounts: Sequence[_AccountAt]) -> dict[str, object]:
    totals: dict[str, int] = {}
    wallets: dict[str, list[dict[str, object]]] = {}
    for account in accounts:
        if account.kind not in WALLET_KINDS:
            continue
        balance = -account.credit_balance
        totals[account.asset] = totals.get(account.asset, 0) + balance
        # On-chain addresses arrive with the custody wallets; until then the ledger account stands in.
        wallets.setdefault(account.asset, []).append({
            "account": account.id, "owner": account.owner, "kind": account.kind,
            "balance": str(balance), "addresses": []})
    return {asset: {"total": str(totals[asset]), "wallets": wallets[asset]} for asset in sorted(totals)}


def reserves_report(snapshot: dict[str, object]) -> list[dict[str, str]]:
    """Return per asset: reserves, liabilities, their ratio and the surplus (minor units)."""
    liabilities = snapshot["liabilities"]
    reserves = snapshot["reserves"]
    assert isinstance(liabilities, dict) and isinstance(reserves, dict)
    rows = []
    for asset in sorted(set(liabilities) | set(reserves)):
        held = int(reserves.get(asset, {}).get("total", "0"))
        owed = int(liabilities.get(asset, {}).get("total", "0"))
        rows.append({"asset": asset, "reserves": str(held), "liabilities": str(owed),
                     "ratio": _ratio(held, owed), "surplus": str(held - owed)})
    return rows


def _ratio(held: int, owed: int) -> str:
    """Return held/owed with RATIO_DECIMALS decimals, rounded down, in integer arithmetic."""
    if owed == 0:
        return "inf" if held else "n/a"
    scaled = held * 10**RATIO_DECIMALS // owed
    return f"{scaled // 10**RATIO_DECIMALS}.{scaled % 10**RATIO_DECIMALS:0{RATIO_DECIMALS}d}"
