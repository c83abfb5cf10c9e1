"""The database-backed audit service: write signed checkpoints, serve proofs, export the ledger.

It reads the ledger only through its journal and head, so it needs no hook
inside the ledger: run :meth:`AuditService.checkpoint_if_due` after writes
(or from a timer) to checkpoint every N entries, and
:meth:`AuditService.create_checkpoint` on demand.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, Checkpoint, TotalsAccumulator
from custody.audit.codes import AuditCode, AuditError
from custody.audit.export import (
    ED25519,
    LIABILITIES_FILE,
    SNAPSHOTS_FILE,
    AccountRecord,
    ExportWriter,
    Manifest,
    PublicKey,
)
from custody.audit.liabilities import liability_leaf
from custody.audit.merkle import Frontier, MerkleTree, leaf_hash
from custody.audit.models import AuditCheckpoint, AuditLiabilityLeaf, AuditLiabilitySnapshot
from custody.audit.proofs import consistency_document, inclusion_document
from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, KeyType
from custody.ledger.bulk import TRANSFER_COLUMNS, entry_from_row
from custody.ledger.entry import GENESIS_HASH, AccountKind, Entry, TransferKind, canonical_json, chain_hash
from custody.ledger.models import LedgerAccount, LedgerHead, LedgerTransfer
from custody.ledger.service import HEAD_ID, Ledger, wall_clock_ms

CHECKPOINT_KEY_NAME = "ledger-checkpoint"
JOURNAL_PAGE = 5_000
CHECKPOINT_LIST_MAX = 1_000
CHECKPOINT_RETRIES = 3
USER_KINDS = frozenset({AccountKind.USER_AVAILABLE.value, AccountKind.USER_HELD.value,
                        AccountKind.USER_MARGIN.value})
# Proofs keep every leaf hash in memory: about 100 bytes per entry (100 MB per million).
PROOF_TREE_MAX_ENTRIES = 10_000_000


class AuditService:
    """Checkpoints, proofs and exports over one ledger, signed through one keystore."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ledger: Ledger,
        keystore: Keystore,
        clock: Callable[[], int] = wall_clock_ms,
        key_name: str = CHECKPOINT_KEY_NAME,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._keystore = keystore
        self._clock = clock
        self.key_name = key_name
        self._tree = MerkleTree()
        self._tree_lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------

    def signing_key_version(self) -> int:
        """Return the latest version of the checkpoint key, creating the key on first use."""
        try:
            return self._keystore.key_info(self.key_name).latest_version
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
        try:
            return self._keystore.create_key(self.key_name, KeyType.ED25519).latest_version
        except KeystoreError as race:
            # Another process created the key between our two calls.
            if race.code != KeystoreErrorCode.KEY_EXISTS:
                raise
            return self._keystore.key_info(self.key_name).latest_version

    def public_keys(self) -> list[PublicKey]:
        """Return every version of the checkpoint public key (empty before the first checkpoint)."""
        try:
            info = self._keystore.key_info(self.key_name)
        except KeystoreError as exc:
            if exc.code is KeystoreErrorCode.KEY_NOT_FOUND:
                return []
            raise
        return [PublicKey(self.key_name, version, ED25519, raw)
                for version, raw in sorted(info.public_keys.items())]

    def sign(self, message: bytes, version: int) -> bytes:
        """Sign ``message`` with the checkpoint key at ``version``."""
        return self._keystore.sign(self.key_name, message, version=version).value

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint_if_due(self, every_entries: int) -> Checkpoint | None:
        """Write a checkpoint if at least ``every_entries`` entries are not yet covered."""
        if every_entries < 1:
            raise AuditError(AuditCode.INVALID_ARGUMENT,
                             f"every_entries was {every_entries}, must be >= 1")
        head_seq, _ = self._ledger.head()
        latest = self.latest_checkpoint()
        covered = 0 if latest is None else latest.last_seq
        if head_seq - covered < every_entries:
            return None
        return self.create_checkpoint()

    def create_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint over every entry up to the current head."""
        target, _ = self._ledger.head()
        with self._sessions() as session:
            prev_row = session.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.number.desc()).limit(1))
        prev = None if prev_row is None else Checkpoint.from_bytes(prev_row.record.encode("ascii"))
        covered = 0 if prev is None else prev.last_seq
        if target <= covered:
            raise AuditError(AuditCode.NO_NEW_ENTRIES,
                             f"no entries since checkpoint {prev.number if prev else 0} (seq {covered})")
        frontier = Frontier() if prev_row is None else Frontier.from_hex(
            covered, json.loads(prev_row.frontier))
        totals = TotalsAccumulator(None if prev is None else prev.totals)
        head_hash = self._fold_entries(covered, target, prev.head_hash if prev else GENESIS_HASH,
                                       frontier, totals)
        version = self.signing_key_version()
        unsigned = Checkpoint(
            number=1 if prev is None else prev.number + 1, first_seq=covered + 1, last_seq=target,
            root=frontier.root().hex(), head_hash=head_hash,
            prev_checkpoint=FIRST_PREV_CHECKPOINT if prev is None else prev.hash(),
            totals=totals.snapshot(), timestamp_ms=self._clock(), key_name=self.key_name,
            key_version=version)
        checkpoint = unsigned.with_signature(self.sign(unsigned.signing_message(), version))
        self._store(checkpoint, frontier)
        return checkpoint

    def _fold_entries(
        self, after_seq: int, target: int, chain: str, frontier: Frontier, totals: TotalsAccumulator
    ) -> str:
        """Feed entries ``after_seq+1..target`` to the frontier and totals, re-checking the chain."""
        held: dict[str, int] = {}
        expected = after_seq + 1
        for entry, entry_hash in self._journal(after_seq, target):
            raw = entry.to_bytes()
            if entry.seq != expected or chain_hash(chain, raw) != entry_hash:
                raise AuditError(AuditCode.CORRUPT_JOURNAL,
                                 f"journal entry seq {entry.seq} (expected {expected}) does not chain "
                                 "to its predecessor: refusing to sign")
            frontier.append_hash(leaf_hash(raw))
            totals.add(entry, self._held_amount(entry, held))
            chain, expected = entry_hash, expected + 1
        if expected != target + 1:
            raise AuditError(AuditCode.CORRUPT_JOURNAL,
                             f"journal ends at seq {expected - 1}, head is {target}")
        return chain

    def _held_amount(self, entry: Entry, held: dict[str, int]) -> int:
        if entry.kind is TransferKind.PENDING:
            held[entry.id] = entry.amount
            return 0
        if entry.kind is not TransferKind.POST:
            if entry.pending_id is not None:
                held.pop(entry.pending_id, None)
            return 0
        assert entry.pending_id is not None
        amount = held.pop(entry.pending_id, None)
        return self._ledger.get_transfer(entry.pending_id).amount if amount is None else amount

    def _store(self, checkpoint: Checkpoint, frontier: Frontier) -> None:
        row = AuditCheckpoint(
            number=checkpoint.number, first_seq=checkpoint.first_seq, last_seq=checkpoint.last_seq,
            checkpoint_hash=checkpoint.hash(), timestamp_ms=checkpoint.timestamp_ms,
            record=checkpoint.to_bytes().decode("ascii"), frontier=json.dumps(frontier.to_hex()))
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise AuditError(AuditCode.CHECKPOINT_CONFLICT,
                             f"checkpoint {checkpoint.number} was written concurrently; retry") from None

    def checkpoint_at_head(self) -> Checkpoint:
        """Return a checkpoint covering the current head, writing one if the head is not covered."""
        for _ in range(CHECKPOINT_RETRIES):
            head_seq, _ = self._ledger.head()
            latest = self.latest_checkpoint()
            if latest is not None and latest.last_seq >= head_seq:
                return latest
            try:
                return self.create_checkpoint()
            except AuditError as exc:
                # A concurrent writer checkpointed first: read again.
                if exc.code not in (AuditCode.NO_NEW_ENTRIES, AuditCode.CHECKPOINT_CONFLICT):
                    raise
        latest = self.latest_checkpoint()
        if latest is None:
            raise AuditError(AuditCode.CHECKPOINT_CONFLICT, "could not write a checkpoint; retry")
        return latest

    def latest_checkpoint(self) -> Checkpoint | None:
        """Return the newest checkpoint, or None before the first."""
        with self._sessions() as session:
            row = session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.number.desc()).limit(1))
            return None if row is None else _checkpoint(row)

    def get_checkpoint(self, number: int) -> Checkpoint:
        """Return checkpoint ``number`` or raise checkpoint_not_found."""
        with self._sessions() as session:
            row = session.get(AuditCheckpoint, number)
            if row is None:
                raise AuditError(AuditCode.CHECKPOINT_NOT_FOUND, f"checkpoint {number} does not exist")
            return _checkpoint(row)

    def checkpoint_at_size(self, tree_size: int) -> Checkpoint | None:
        """Return the checkpoint whose tree has ``tree_size`` entries, if any."""
        with self._sessions() as session:
            row = session.scalar(select(AuditCheckpoint).where(AuditCheckpoint.last_seq == tree_size))
            return None if row is None else _checkpoint(row)

    def list_checkpoints(self, after: int = 0, limit: int = 100) -> list[Checkpoint]:
        """Return checkpoints numbered above ``after``, oldest first."""
        if not 1 <= limit <= CHECKPOINT_LIST_MAX:
            raise AuditError(AuditCode.INVALID_ARGUMENT,
                             f"limit was {limit}, must be 1..{CHECKPOINT_LIST_MAX}")
        with self._sessions() as session:
            rows = session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.number > after)
                                   .order_by(AuditCheckpoint.number).limit(limit)).all()
            return [_checkpoint(row) for row in rows]

    # -- proofs -----------------------------------------------------------------------------

    def inclusion_proof(self, seq: int, tree_size: int) -> dict[str, object]:
        """Return the proof document that entry ``seq`` is in the tree of ``tree_size`` entries."""
        self._check_tree_size(tree_size)
        if not 1 <= seq <= tree_size:
            raise AuditError(AuditCode.ENTRY_NOT_FOUND, f"seq was {seq}, must be 1..{tree_size}")
        tree = self._tree_of(tree_size)
        entry, _ = self._ledger.journal(after_seq=seq - 1, limit=1)[0]
        return inclusion_document(tree, entry.to_bytes(), seq, tree_size, self.checkpoint_at_size(tree_size))

    def consistency_proof(self, first_size: int, second_size: int) -> dict[str, object]:
        """Return the proof document that the tree of ``second_size`` extends ``first_size``."""
        self._check_tree_size(second_size)
        if not 1 <= first_size <= second_size:
            raise AuditError(AuditCode.INVALID_TREE_SIZE,
                             f"first tree size was {first_size}, must be 1..{second_size}")
        tree = self._tree_of(second_size)
        return consistency_document(tree, first_size, second_size,
                                    self.checkpoint_at_size(first_size), self.checkpoint_at_size(second_size))

    def _check_tree_size(self, tree_size: int) -> None:
        head_seq, _ = self._ledger.head()
        if not 1 <= tree_size <= min(head_seq, PROOF_TREE_MAX_ENTRIES):
            raise AuditError(AuditCode.INVALID_TREE_SIZE, f"tree size was {tree_size}, must be 1.."
                             f"{min(head_seq, PROOF_TREE_MAX_ENTRIES)} (the journal has {head_seq} entries)")

    def _tree_of(self, tree_size: int) -> MerkleTree:
        """Return the cached tree, extended to at least ``tree_size`` leaves (entries never change)."""
        with self._tree_lock:
            if self._tree.size < tree_size:
                for entry, _ in self._journal(self._tree.size, tree_size):
                    assert entry.seq == self._tree.size + 1, "journal has a gap"
                    self._tree.append(leaf_hash(entry.to_bytes()))
            return self._tree

    def _journal(self, after_seq: int, up_to_seq: int) -> Iterator[tuple[Entry, str]]:
        """Yield journal entries ``after_seq+1..up_to_seq`` page by page.

        Reads rows as plain tuples (no ORM objects): checkpoints and exports read
        the whole journal, and the ORM would triple the cost.
        """
        table = LedgerTransfer.__table__
        columns = [table.c[name] for name in TRANSFER_COLUMNS]
        cursor = after_seq
        while cursor < up_to_seq:
            query = (select(*columns).where(table.c.seq > cursor, table.c.seq <= up_to_seq)
                     .order_by(table.c.seq).limit(JOURNAL_PAGE))
            with self._sessions() as session:
                page = [entry_from_row(row) for row in session.execute(query)]
            if not page:
                return
            yield from page
            cursor = page[-1][0].seq

    # -- export -----------------------------------------------------------------------------

    def export(self, directory: Path) -> Manifest:
        """Write a ledger export (docs/ledger-export.md) of everything up to the current head."""
        try:
            writer = ExportWriter(directory)
        except FileExistsError as exc:
            raise AuditError(AuditCode.EXPORT_DIR_NOT_EMPTY, str(exc)) from None
        head_seq, head_hash, accounts = self._head_and_accounts()
        pages = (list(self._journal(start, min(start + JOURNAL_PAGE, head_seq)))
                 for start in range(0, head_seq, JOURNAL_PAGE))
        count, last_seq, last_hash = writer.write_entries(pages)
        if (count, last_seq, last_hash) != (head_seq, head_seq, head_hash):
            raise AuditError(AuditCode.CORRUPT_JOURNAL,
                             f"journal holds {count} entries ending at seq {last_seq}, head is {head_seq}")
        checkpoints = [c for c in self._all_checkpoints() if c.last_seq <= head_seq]
        writer.write_checkpoints(checkpoints)
        writer.write_accounts(accounts)
        writer.write_keys(self.public_keys())
        snapshot_ids = self._snapshot_ids(head_seq)
        snapshots = writer.write_lines(SNAPSHOTS_FILE, self._snapshot_records(snapshot_ids))
        writer.write_lines(LIABILITIES_FILE, self._liability_leaves(snapshot_ids, head_seq))
        manifest = Manifest(created_ms=self._clock(), head_seq=head_seq, head_hash=head_hash,
                            entries=count, checkpoints=len(checkpoints), accounts=len(accounts),
                            snapshots=snapshots)
        writer.write_manifest(manifest)
        return manifest

    def _head_and_accounts(self) -> tuple[int, str, list[AccountRecord]]:
        """Read the head and every account's balances in one consistent transaction."""
        with self._sessions.begin() as session:
            # A shared lock on the head row waits out (and then blocks) writers, so the
            # balances read next are exactly those after entry ``head.seq``.
            head = session.scalar(select(LedgerHead).where(LedgerHead.id == HEAD_ID)
                                  .with_for_update(read=True))
            assert head is not None, "ledger_head row is missing"
            rows = session.scalars(select(LedgerAccount).order_by(LedgerAccount.id)).all()
            accounts = [AccountRecord(
                id=r.id, owner=r.owner, asset=r.asset, kind=r.kind, flags=r.flags,
                created_ms=r.created_ms, debits_pending=r.debits_pending,
                debits_posted=r.debits_posted, credits_pending=r.credits_pending,
                credits_posted=r.credits_posted) for r in rows]
            return head.seq, head.hash, accounts

    def _snapshot_ids(self, head_seq: int) -> list[int]:
        with self._sessions() as session:
            return list(session.scalars(select(AuditLiabilitySnapshot.id).where(
                AuditLiabilitySnapshot.ledger_seq <= head_seq).order_by(AuditLiabilitySnapshot.id)))

    def _snapshot_records(self, ids: list[int]) -> Iterator[bytes]:
        for snapshot_id in ids:
            with self._sessions() as session:
                row = session.get(AuditLiabilitySnapshot, snapshot_id)
                assert row is not None
                yield row.record.encode("ascii")

    def _liability_leaves(self, ids: list[int], head_seq: int) -> Iterator[bytes]:
        """Yield the auditor's view of every leaf: hash, sum and the user accounts it covers."""
        table = LedgerTransfer.__table__
        with self._sessions() as session:
            opened = {int(account): int(seq) for account, seq in session.execute(
                select(table.c.debit_account_id, table.c.seq).where(
                    table.c.kind == TransferKind.OPEN.value, table.c.seq <= head_seq))}
            owned: dict[tuple[str, str], list[int]] = {}
            for row in session.scalars(select(LedgerAccount).where(LedgerAccount.kind.in_(USER_KINDS))
                                       .order_by(LedgerAccount.id)):
                owned.setdefault((row.owner, row.asset), []).append(row.id)
        for snapshot_id in ids:
            with self._sessions() as session:
                seq = session.get(AuditLiabilitySnapshot, snapshot_id).ledger_seq  # type: ignore[union-attr]
                leaves = session.scalars(select(AuditLiabilityLeaf).where(
                    AuditLiabilityLeaf.snapshot_id == snapshot_id).order_by(
                    AuditLiabilityLeaf.asset, AuditLiabilityLeaf.position)).all()
            for leaf in leaves:
                node = liability_leaf(bytes.fromhex(leaf.salt), leaf.owner, leaf.balance)
                accounts = [a for a in owned.get((leaf.owner, leaf.asset), [])
                            if opened.get(a, seq + 1) <= seq]
                yield canonical_json({"snapshot": snapshot_id, "asset": leaf.asset, "index": leaf.position,
                                      "hash": node.hash.hex(), "sum": str(node.total),
                                      "accounts": accounts})

    def _all_checkpoints(self) -> Iterator[Checkpoint]:
        after = 0
        while page := self.list_checkpoints(after, CHECKPOINT_LIST_MAX):
            yield from page
            after = page[-1].number


def _checkpoint(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint.from_bytes(row.record.encode("ascii"))
