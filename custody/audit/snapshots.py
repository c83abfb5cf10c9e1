"""Reserves snapshots bound to the ledger: their format, and their offline verification (pure).

A snapshot (format v2, docs/proof-of-reserves.md) is taken at the ledger
sequence of a signed checkpoint and names that checkpoint's hash; snapshots
are chained (each names the hash of the one before) and signed with the
checkpoint key, so a snapshot cannot be replaced, dropped or forked without
the auditor's state file or a user's pinned snapshot hash noticing.

The export carries every snapshot (snapshots.jsonl) and every liabilities
leaf as the auditor may see it (liabilities.jsonl: leaf hash, sum, and the ids
of the user accounts it covers; no salts). The verifier checks, against the
balances it replayed at each snapshot's ledger sequence, that every user
account is covered by exactly one leaf, that each leaf's sum is what its
accounts held, and that the leaves fold to the signed roots and totals.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody.audit.checkpoint import Checkpoint
from custody.audit.liabilities import U256_MAX, SumNode, sum_node
from custody.audit.untrusted import FormatError, lines, loads
from custody.ledger.entry import GENESIS_HASH, canonical_json

if TYPE_CHECKING:
    from custody.audit.export import PublicKey
    from custody.audit.state import AuditState
    from custody.audit.verify import Report

SNAPSHOT_FORMAT = "strongroom.reserves-snapshot"
SNAPSHOT_VERSION = 2
SNAPSHOT_SIGNING_DOMAIN = b"strongroom.reserves.snapshot.v2\x00"
SNAPSHOT_HASH_DOMAIN = b"strongroom.reserves.snapshot-hash.v2\x00"
FIRST_PREV_SNAPSHOT = GENESIS_HASH
SNAPSHOTS_FILE = "snapshots.jsonl"
LIABILITIES_FILE = "liabilities.jsonl"
SNAPSHOT_LINE_MAX_BYTES = 4 * 1024 * 1024
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")
DIGITS = re.compile(r"^(0|[1-9][0-9]{0,77})$")
SNAPSHOT_KEYS = frozenset({
    "format", "v", "id", "created_ms", "ledger_seq", "ledger_head", "checkpoint", "prev_snapshot",
    "liabilities", "reserves", "key_name", "key_version", "signature",
})
LIABILITY_KEYS = frozenset({"root", "total", "leaves", "clamped_accounts"})
RESERVE_KEYS = frozenset({"total", "wallets"})
WALLET_KEYS = frozenset({"account", "owner", "kind", "balance", "addresses"})
LEAF_KEYS = frozenset({"snapshot", "asset", "index", "hash", "sum", "accounts"})
USER_KINDS = frozenset({"user_available", "user_held", "user_margin"})
WALLET_KINDS = frozenset({"hot_wallet", "cold_wallet"})


@dataclass(frozen=True)
class Snapshot:
    """One signed reserves snapshot: the record as published, plus its parsed key fields."""

    record: dict[str, object]
    id: int
    ledger_seq: int
    ledger_head: str
    checkpoint: str
    prev_snapshot: str
    liabilities: dict[str, tuple[str, int, int, int]]  # asset -> (root, total, leaves, clamped)
    reserves: dict[str, tuple[int, list[tuple[int, int]]]]  # asset -> (total, [(account, balance)])
    key_name: str
    key_version: int
    signature: str

    def to_bytes(self) -> bytes:
        """Return the canonical bytes of the whole record, signature included."""
        return canonical_json(self.record)

    def hash(self) -> str:
        """Return the snapshot's identity: what users pin and the next snapshot names."""
        return hashlib.sha256(SNAPSHOT_HASH_DOMAIN + self.to_bytes()).hexdigest()

    def verify_signature(self, public_key: bytes) -> bool:
        """Return True if the record is signed by ``public_key``."""
        body = {k: v for k, v in self.record.items() if k != "signature"}
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                bytes.fromhex(self.signature), signing_message(body))
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def from_bytes(cls, raw: bytes) -> Snapshot:
        """Parse canonical bytes; anything that does not re-serialise to itself is rejected."""
        snapshot = cls.from_dict(loads(raw, "snapshot"))
        if snapshot.to_bytes() != raw:
            raise FormatError("snapshot bytes are not in canonical form")
        return snapshot

    @classmethod
    def from_dict(cls, data: object) -> Snapshot:
        """Parse a snapshot record, checking every field's type and range."""
        if not isinstance(data, dict) or set(data) != SNAPSHOT_KEYS:
            raise FormatError(f"a snapshot must have exactly the keys {sorted(SNAPSHOT_KEYS)}")
        if data["format"] != SNAPSHOT_FORMAT or data["v"] != SNAPSHOT_VERSION:
            raise FormatError(f"snapshot format must be {SNAPSHOT_FORMAT!r} version {SNAPSHOT_VERSION}")
        for name in ("id", "created_ms", "ledger_seq", "key_version"):
            _natural(data[name], f"snapshot {name}")
        for name in ("ledger_head", "checkpoint", "prev_snapshot"):
            if not isinstance(data[name], str) or not HEX64.match(data[name]):
                raise FormatError(f"snapshot {name} must be 64 lowercase hex digits")
        if not isinstance(data["key_name"], str) or not isinstance(data["signature"], str) or (
                not HEX128.match(data["signature"])):
            raise FormatError("snapshot key_name must be a string and signature 128 hex digits")
        return cls(dict(data), data["id"], data["ledger_seq"], data["ledger_head"], data["checkpoint"],
                   data["prev_snapshot"], _liabilities(data["liabilities"]), _reserves(data["reserves"]),
                   data["key_name"], data["key_version"], data["signature"])


def signing_message(body: Mapping[str, object]) -> bytes:
    """Return the domain-separated bytes signed for a snapshot body (every field but the signature)."""
    return SNAPSHOT_SIGNING_DOMAIN + canonical_json(dict(body))


def snapshot_hash(record: Mapping[str, object]) -> str:
    """Return the hash of a signed snapshot record (see :meth:`Snapshot.hash`)."""
    return hashlib.sha256(SNAPSHOT_HASH_DOMAIN + canonical_json(dict(record))).hexdigest()


def _natural(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FormatError(f"{what} must be a non-negative integer")
    return value


def _amount(value: object, what: str) -> int:
    if not isinstance(value, str) or not DIGITS.match(value) or int(value) > U256_MAX:
        raise FormatError(f"{what} must be a decimal string 0..2^256-1")
    return int(value)


def _liabilities(value: object) -> dict[str, tuple[str, int, int, int]]:
    if not isinstance(value, dict):
        raise FormatError("snapshot liabilities must be an object keyed by asset")
    result = {}
    for asset, item in value.items():
        if not isinstance(item, dict) or set(item) != LIABILITY_KEYS:
            raise FormatError(f"snapshot liabilities per asset must have {sorted(LIABILITY_KEYS)}")
        if not isinstance(item["root"], str) or not HEX64.match(item["root"]):
            raise FormatError("snapshot liabilities root must be 64 lowercase hex digits")
        result[asset] = (item["root"], _amount(item["total"], "snapshot liabilities total"),
                         _natural(item["leaves"], "snapshot leaves"),
                         _natural(item["clamped_accounts"], "snapshot clamped_accounts"))
    return result


def _reserves(value: object) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    if not isinstance(value, dict):
        raise FormatError("snapshot reserves must be an object keyed by asset")
    result = {}
    for asset, item in value.items():
        if not isinstance(item, dict) or set(item) != RESERVE_KEYS or not isinstance(item["wallets"], list):
            raise FormatError(f"snapshot reserves per asset must have {sorted(RESERVE_KEYS)}")
        wallets = []
        for wallet in item["wallets"]:
            if not isinstance(wallet, dict) or set(wallet) != WALLET_KEYS:
                raise FormatError(f"snapshot reserve wallets must have {sorted(WALLET_KEYS)}")
            wallets.append((_natural(wallet["account"], "wallet account"),
                            _amount(wallet["balance"], "wallet balance")))
        result[asset] = (_amount(item["total"], "snapshot reserves total"), wallets)
    return result


# -- verification (called by custody.audit.verify after the pass over the entries) ----------------

def load_snapshots(directory: Path, report: Report) -> list[Snapshot]:
    """Read snapshots.jsonl; a malformed line is a failure, an unreadable file unusable input."""
    snapshots: list[Snapshot] = []
    try:
        handle = open(directory / SNAPSHOTS_FILE, "rb")  # noqa: SIM115 - closed by the with-block
    except OSError as exc:
        raise FormatError(f"cannot read {SNAPSHOTS_FILE}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(lines(handle, SNAPSHOTS_FILE, SNAPSHOT_LINE_MAX_BYTES), start=1):
            try:
                snapshots.append(Snapshot.from_bytes(raw))
            except FormatError as exc:
                report.fail("snapshot_malformed", f"{SNAPSHOTS_FILE} line {number}: {exc}", line=number)
    return snapshots


def verify_snapshots(
    directory: Path,
    snapshots: Sequence[Snapshot],
    checkpoints: Sequence[Checkpoint],
    keys: Mapping[tuple[str, int], PublicKey],
    terms: Mapping[int, tuple[str, str, int, str]],
    captured: Mapping[int, Mapping[int, int]],
    state: AuditState | None,
    report: Report,
) -> None:
    """Check the snapshots' chain, signatures, checkpoints, reserves and every liabilities leaf."""
    bad = len(report.failures)
    by_hash = {c.hash(): c for c in checkpoints}
    prev = FIRST_PREV_SNAPSHOT
    for index, snapshot in enumerate(snapshots, start=1):
        _check_snapshot(index, snapshot, prev, by_hash, keys, captured, terms, report)
        report.snapshot_hashes[snapshot.id] = snapshot.hash()
        prev = snapshot.hash()
    _check_snapshot_state(snapshots, state, report)
    leaves = _LeafCheck({s.id: s for s in snapshots}, terms, captured, report)
    leaves.run(directory / LIABILITIES_FILE)
    if snapshots and len(report.failures) == bad:
        report.checks.append(
            f"reserves: {len(snapshots)} snapshots chained, signed and bound to their checkpoints; "
            "every user account is in exactly one liabilities leaf whose sum is its balance at the "
            "snapshot's ledger sequence; leaves fold to the signed roots and totals")


def _check_snapshot(
    index: int, snapshot: Snapshot, prev: str, by_hash: Mapping[str, Checkpoint],
    keys: Mapping[tuple[str, int], PublicKey], captured: Mapping[int, Mapping[int, int]],
    terms: Mapping[int, tuple[str, str, int, str]], report: Report,
) -> None:
    sid = snapshot.id
    if sid != index or snapshot.prev_snapshot != prev:
        report.fail("snapshot_chain_broken", f"snapshot {sid} is line {index} of {SNAPSHOTS_FILE} and "
                    f"names previous snapshot {snapshot.prev_snapshot[:16]}..., expected "
                    f"{prev[:16]}...: snapshots are missing, reordered or forked")
    key = keys.get((snapshot.key_name, snapshot.key_version))
    if key is None or not snapshot.verify_signature(key.public_key):
        report.fail("snapshot_signature_invalid", f"snapshot {sid}: signature does not verify with a "
                    f"pinned key ({snapshot.key_name[:80]!r} v{snapshot.key_version})")
    checkpoint = by_hash.get(snapshot.checkpoint)
    if checkpoint is None or checkpoint.last_seq != snapshot.ledger_seq or (
            checkpoint.head_hash != snapshot.ledger_head):
        report.fail("snapshot_checkpoint_mismatch", f"snapshot {sid} at ledger seq "
                    f"{snapshot.ledger_seq} names checkpoint {snapshot.checkpoint[:16]}..., which is "
                    "not a checkpoint of this export covering exactly that sequence and head")
        return
    balances = captured.get(snapshot.ledger_seq, {})
    for asset, (total, wallets) in sorted(snapshot.reserves.items()):
        expected = sorted((a, b) for a, b in balances.items()
                          if terms[a][1] in WALLET_KINDS and terms[a][3] == asset)
        if sorted(wallets) != expected or total != sum(b for _, b in wallets):
            report.fail("snapshot_reserves_mismatch", f"snapshot {sid}: {asset[:20]} reserves "
                        f"{total} over wallets {sorted(wallets)} differ from the wallet balances at "
                        f"seq {snapshot.ledger_seq}: {expected}")


def _check_snapshot_state(snapshots: Sequence[Snapshot], state: AuditState | None, report: Report) -> None:
    if state is None:
        return
    present = {s.id: s.hash() for s in snapshots}
    for sid, digest in sorted(state.snapshots.items()):
        if sid not in present:
            report.fail("snapshot_rollback", f"the previously verified reserves snapshot {sid} "
                        f"({digest}) is not in this export")
        elif present[sid] != digest:
            report.fail("snapshot_fork", f"reserves snapshot {sid} has hash {present[sid]}, but the "
                        f"previously verified snapshot {sid} had {digest}")


class _LeafCheck:
    """Stream liabilities.jsonl once, folding each (snapshot, asset) tree with O(log n) memory."""

    def __init__(
        self, snapshots: Mapping[int, Snapshot], terms: Mapping[int, tuple[str, str, int, str]],
        captured: Mapping[int, Mapping[int, int]], report: Report,
    ) -> None:
        self.snapshots, self.terms, self.captured, self.report = snapshots, terms, captured, report
        self.current: tuple[int, str] | None = None
        self.stack: list[tuple[SumNode, int]] = []
        self.count = 0
        self.last_hash = ""
        self.covered: dict[int, set[int]] = {sid: set() for sid in snapshots}
        self.owners: set[str] = set()
        self.folded: dict[tuple[int, str], tuple[SumNode | None, int]] = {}

    def run(self, path: Path) -> None:
        """Check every leaf line, then every tree and every user account's coverage."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with-block
        except OSError as exc:
            raise FormatError(f"cannot read {LIABILITIES_FILE}: {exc.strerror}") from None
        with handle:
            for number, raw in enumerate(lines(handle, LIABILITIES_FILE), start=1):
                self._leaf(number, raw)
        self._finish_tree()
        for _, snapshot in sorted(self.snapshots.items()):
            self._check_trees(snapshot)
            self._check_coverage(snapshot)

    def _leaf(self, number: int, raw: bytes) -> None:
        data = loads(raw, f"{LIABILITIES_FILE} line {number}")
        if not isinstance(data, dict) or set(data) != LEAF_KEYS or canonical_json(data) != raw:
            raise FormatError(f"{LIABILITIES_FILE} line {number}: a leaf must be canonical JSON with "
                              f"exactly the keys {sorted(LEAF_KEYS)}")
        sid, asset, index = data["snapshot"], data["asset"], data["index"]
        digest, accounts = data["hash"], data["accounts"]
        total = _amount(data["sum"], f"{LIABILITIES_FILE} line {number} sum")
        _natural(index, f"{LIABILITIES_FILE} line {number} index")
        if not isinstance(asset, str) or not isinstance(digest, str) or not HEX64.match(digest) or (
                not isinstance(accounts, list) or not accounts
                or not all(isinstance(a, int) and not isinstance(a, bool) for a in accounts)):
            raise FormatError(f"{LIABILITIES_FILE} line {number}: asset must be a string, hash 64 hex "
                              "digits and accounts a non-empty list of account ids")
        snapshot = self.snapshots.get(sid) if isinstance(sid, int) else None
        if snapshot is None:
            self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: snapshot "
                             f"{str(sid)[:20]} is not in {SNAPSHOTS_FILE}", line=number)
            return
        if self.current != (sid, asset):
            self._finish_tree()
            self.current = (sid, asset)
            if (sid, asset) in self.folded:
                self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: the "
                                 f"leaves of snapshot {sid} {asset[:20]} are not contiguous", line=number)
        if index != self.count or digest <= self.last_hash:
            self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: leaf "
                             f"{index} of snapshot {sid} {asset[:20]} is out of order (leaves are "
                             "numbered from 0 in increasing hash order)", line=number)
        self._account_sum(number, snapshot, asset, accounts, total)
        self._push(SumNode(bytes.fromhex(digest), total))
        self.last_hash = digest

    def _account_sum(
        self, number: int, snapshot: Snapshot, asset: str, accounts: list[int], total: int
    ) -> None:
        balances = self.captured.get(snapshot.ledger_seq, {})
        owners, owed = set(), 0
        for account in accounts:
            info = self.terms.get(account)
            if info is None or info[1] not in USER_KINDS or info[2] > snapshot.ledger_seq or (
                    info[3] != asset) or account not in balances:
                self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: "
                                 f"account {account} is not a {asset[:20]} user account open at seq "
                                 f"{snapshot.ledger_seq}", line=number, account=account)
                return
            if account in self.covered[snapshot.id]:
                self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: "
                                 f"account {account} is covered by two leaves of snapshot "
                                 f"{snapshot.id}", line=number, account=account)
            self.covered[snapshot.id].add(account)
            owners.add(info[0])
            owed += max(0, balances[account])
        owner = next(iter(owners))
        if len(owners) != 1 or owner in self.owners:
            self.report.fail("liability_leaf_invalid", f"{LIABILITIES_FILE} line {number}: a leaf must "
                             "cover the accounts of exactly one owner, and each owner has one leaf "
                             f"per asset (accounts {accounts[:MAX_SHOWN]})", line=number)
        self.owners.add(owner)
        if owed != total:
            self.report.fail("liability_sum_mismatch", f"snapshot {snapshot.id} {asset[:20]}: leaf at "
                             f"{LIABILITIES_FILE} line {number} claims {total}, but accounts "
                             f"{accounts[:MAX_SHOWN]} held {owed} at seq {snapshot.ledger_seq}",
                             line=number)

    def _push(self, node: SumNode) -> None:
        self.count += 1
        self.stack.append((node, 1))
        while len(self.stack) > 1 and self.stack[-1][1] == self.stack[-2][1]:
            right, size = self.stack.pop()
            left, _ = self.stack.pop()
            try:
                self.stack.append((sum_node(left, right), size * 2))
            except OverflowError:
                self.report.fail("liability_sum_mismatch", "liabilities sum beyond 2^256-1")
                self.stack.append((left, size * 2))

    def _finish_tree(self) -> None:
        if self.current is not None:
            root: SumNode | None = None
            for node, _ in reversed(self.stack):
                try:
                    root = node if root is None else sum_node(node, root)
                except OverflowError:
                    self.report.fail("liability_sum_mismatch", "liabilities sum beyond 2^256-1")
            self.folded[self.current] = (root, self.count)
        self.current, self.stack, self.count, self.last_hash = None, [], 0, ""
        self.owners = set()

    def _check_trees(self, snapshot: Snapshot) -> None:
        assets = {a for sid, a in self.folded if sid == snapshot.id} | set(snapshot.liabilities)
        for asset in sorted(assets):
            root, count = self.folded.get((snapshot.id, asset), (None, 0))
            claimed = snapshot.liabilities.get(asset)
            if claimed is None or root is None or (root.hash.hex(), root.total, count) != claimed[:3]:
                self.report.fail("liability_root_mismatch", f"snapshot {snapshot.id} {asset[:20]}: the "
                                 f"exported leaves fold to {_tree_text(root, count)}, the signed snapshot "
                                 f"says {_claim_text(claimed)}")

    def _check_coverage(self, snapshot: Snapshot) -> None:
        balances = self.captured.get(snapshot.ledger_seq, {})
        users = sorted(a for a in balances if self.terms[a][1] in USER_KINDS)
        omitted = [a for a in users if a not in self.covered[snapshot.id]]
        for account in omitted[:MAX_SHOWN]:
            owner, kind, _, asset = self.terms[account]
            self.report.fail("snapshot_user_omitted", f"snapshot {snapshot.id}: user account {account} "
                             f"({owner}, {kind}, {asset}) held {balances[account]} at seq "
                             f"{snapshot.ledger_seq} but is in no liabilities leaf", account=account)
        negative: dict[str, int] = {}
        for account in users:
            if balances[account] < 0:
                negative[self.terms[account][3]] = negative.get(self.terms[account][3], 0) + 1
        for asset, claimed in sorted(snapshot.liabilities.items()):
            if claimed[3] != negative.get(asset, 0):
                self.report.fail("liability_clamped_mismatch", f"snapshot {snapshot.id} {asset[:20]}: "
                                 f"says {claimed[3]} clamped (negative) user accounts, the ledger had "
                                 f"{negative.get(asset, 0)} at seq {snapshot.ledger_seq}")


MAX_SHOWN = 10


def _tree_text(root: SumNode | None, count: int) -> str:
    if root is None:
        return "no leaves"
    return f"root {root.hash.hex()[:16]}..., total {root.total}, {count} leaves"


def _claim_text(claimed: tuple[str, int, int, int] | None) -> str:
    if claimed is None:
        return "no such asset"
    return f"root {claimed[0][:16]}..., total {claimed[1]}, {claimed[2]} leaves"
