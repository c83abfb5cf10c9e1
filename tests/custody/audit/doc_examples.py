"""Regenerate the worked examples of docs/ledger-format.md, ledger-export.md and proof-of-reserves.md.

Run ``python tests/custody/audit/doc_examples.py`` and paste the printed blocks
into the docs after a format change; test_docs.py rebuilds the export from the
pasted blocks and verifies it. The key is the documented example key (private
bytes 0x00..0x1f), never a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, Checkpoint, TotalsAccumulator
from custody.audit.export import AccountRecord, ExportWriter, Manifest, PublicKey, keys_document
from custody.audit.liabilities import LIABILITY_PROOF_FORMAT, LIABILITY_PROOF_VERSION, SumTree, liability_leaf
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.proofs import inclusion_document
from custody.audit.snapshots import (
    FIRST_PREV_SNAPSHOT,
    LIABILITIES_FILE,
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    SNAPSHOTS_FILE,
    signing_message,
    snapshot_hash,
)
from custody.ledger.entry import GENESIS_HASH, Entry, TransferKind, canonical_json, chain_hash

EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = EXAMPLE_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
T0 = 1_767_225_600_000
# id: (owner, kind, flags)
ACCOUNTS = {
    1: ("platform", "hot_wallet", 2),
    2: ("platform", "withdrawals_in_flight", 0),
    3: ("alice", "user_available", 1),
    4: ("bob", "user_available", 1),
    5: ("carol", "user_available", 1),
}
SALTS = {"alice": bytes([1]) * 32, "bob": bytes([2]) * 32, "carol": bytes([3]) * 32}


def _open(account: int) -> Entry:
    owner, kind, flags = ACCOUNTS[account]
    return Entry(seq=account, id=f"open:{account}", kind=TransferKind.OPEN, debit_account=account,
                 credit_account=account, asset="BTC", amount=0, pending_id=None, timeout_s=0,
                 expires_ms=None, code=0, reference="", timestamp_ms=T0, actor="service:ledger",
                 account_owner=owner, account_kind=kind, account_flags=flags)


def example_entries() -> list[Entry]:
    """Return the example journal: five openings, two deposits, a withdrawal hold and its post."""
    def transfer(seq: int, tid: str, kind: TransferKind, debit: int, credit: int, amount: int,
                 actor: str, **extra: object) -> Entry:
        fields: dict[str, object] = {"pending_id": None, "timeout_s": 0, "expires_ms": None,
                                     "reference": "", "timestamp_ms": T0 + seq * 1000, **extra}
        return Entry(seq=seq, id=tid, kind=kind, debit_account=debit, credit_account=credit,
                     asset="BTC", amount=amount, code=0, actor=actor, **fields)  # type: ignore[arg-type]

    return [
        *(_open(account) for account in ACCOUNTS),
        transfer(6, "deposit-alice-1", TransferKind.SINGLE, 1, 3, 150_000_000, "service:deposits",
                 reference="deposit"),
        transfer(7, "deposit-bob-1", TransferKind.SINGLE, 1, 4, 25_000_000, "service:deposits",
                 reference="deposit"),
        transfer(8, "withdraw-alice-1", TransferKind.PENDING, 3, 2, 50_000_000, "user:alice",
                 reference="withdrawal hold", timeout_s=3600, expires_ms=T0 + 8000 + 3_600_000),
        transfer(9, "withdraw-alice-1-post", TransferKind.POST, 3, 2, 50_000_000,
                 "service:withdrawals", pending_id="withdraw-alice-1"),
    ]


def _balances(entries: list[Entry]) -> dict[int, list[int]]:
    balances = {account: [0, 0, 0, 0] for account in ACCOUNTS}  # dpend, dpost, cpend, cpost
    held: dict[str, int] = {}
    for e in entries:
        d, c = balances[e.debit_account], balances[e.credit_account]
        if e.kind is TransferKind.SINGLE:
            d[1] += e.amount
            c[3] += e.amount
        elif e.kind is TransferKind.PENDING:
            d[0] += e.amount
            c[2] += e.amount
            held[e.id] = e.amount
        elif e.kind is TransferKind.POST:
            assert e.pending_id is not None
            h = held.pop(e.pending_id)
            d[0] -= h
            c[2] -= h
            d[1] += e.amount
            c[3] += e.amount
    return balances


def build(directory: Path) -> dict[str, str]:
    """Write the example export to ``directory``; return every documented block by name."""
    entries = example_entries()
    raws = [e.to_bytes() for e in entries]
    blocks: dict[str, str] = {"entry": raws[5].decode(), "open-entry": raws[2].decode()}
    prev, lines, totals, held = GENESIS_HASH, [], TotalsAccumulator(), {}
    for entry, raw in zip(entries, raws, strict=True):
        prev = chain_hash(prev, raw)
        lines.append(f"{prev} {raw.decode()}")
        if entry.kind is TransferKind.PENDING:
            held[entry.id] = entry.amount
        totals.add(entry, held.pop(entry.pending_id, 0) if entry.pending_id else 0)
    blocks["entry-hash"] = chain_hash(GENESIS_HASH, raws[5])
    tree = MerkleTree(leaf_hash(raw) for raw in raws)
    unsigned = Checkpoint(number=1, first_seq=1, last_seq=len(entries), root=tree.root().hex(),
                          head_hash=prev, prev_checkpoint=FIRST_PREV_CHECKPOINT,
                          totals=totals.snapshot(), timestamp_ms=T0 + 100_000,
                          key_name="ledger-checkpoint", key_version=1)
    checkpoint = unsigned.with_signature(EXAMPLE_KEY.sign(unsigned.signing_message()))
    balances = _balances(entries)
    records = [AccountRecord(i, o, "BTC", k, f, T0, *balances[i]) for i, (o, k, f) in ACCOUNTS.items()]
    snapshot, leaves_lines, proof = _snapshot(checkpoint, balances)
    writer = ExportWriter(directory)
    writer.write_entries([[(e, line[:64]) for e, line in zip(entries, lines, strict=True)]])
    writer.write_checkpoints([checkpoint])
    writer.write_accounts(records)
    writer.write_keys([PublicKey("ledger-checkpoint", 1, "ed25519", PUBLIC_KEY)])
    writer.write_lines(SNAPSHOTS_FILE, [canonical_json(snapshot)])
    writer.write_lines(LIABILITIES_FILE, [line.encode() for line in leaves_lines])
    manifest = Manifest(T0 + 200_000, len(entries), prev, len(entries), 1, len(records), 1)
    writer.write_manifest(manifest)
    blocks.update({
        "entries.jsonl": "\n".join(lines), "checkpoints.jsonl": checkpoint.to_bytes().decode(),
        "checkpoint-hash": checkpoint.hash(),
        "accounts.jsonl": "\n".join(canonical_json(r.to_dict()).decode() for r in records),
        "keys.json": json.dumps(keys_document([PublicKey("ledger-checkpoint", 1, "ed25519",
                                                         PUBLIC_KEY)]), indent=2),
        "manifest.json": json.dumps(manifest.to_dict(), indent=2),
        "snapshots.jsonl": canonical_json(snapshot).decode(),
        "snapshot-hash": snapshot_hash(snapshot),
        "liabilities.jsonl": "\n".join(leaves_lines),
        "liability-proof": json.dumps(proof, indent=2),
        "inclusion-proof": json.dumps(inclusion_document(tree, raws[5], 6, len(entries), checkpoint),
                                      indent=2),
    })
    return blocks


def _snapshot(
    checkpoint: Checkpoint, balances: dict[int, list[int]]
) -> tuple[dict[str, object], list[str], dict[str, object]]:
    users = [(ACCOUNTS[i][0], i, balances[i][3] - balances[i][1]) for i in ACCOUNTS
             if ACCOUNTS[i][1] == "user_available"]
    leaves = sorted(((liability_leaf(SALTS[o], o, b), o, i) for o, i, b in users), key=lambda x: x[0].hash)
    tree = SumTree([leaf for leaf, _, _ in leaves])
    root = tree.root()
    hot = balances[1][1] - balances[1][3]
    body: dict[str, object] = {
        "format": SNAPSHOT_FORMAT, "v": SNAPSHOT_VERSION, "id": 1, "created_ms": T0 + 150_000,
        "ledger_seq": checkpoint.last_seq, "ledger_head": checkpoint.head_hash,
        "checkpoint": checkpoint.hash(), "prev_snapshot": FIRST_PREV_SNAPSHOT,
        "liabilities": {"BTC": {"root": root.hash.hex(), "total": str(root.total),
                                "leaves": len(leaves), "clamped_accounts": 0}},
        "reserves": {"BTC": {"total": str(hot), "wallets": [
            {"account": 1, "owner": "platform", "kind": "hot_wallet", "balance": str(hot),
             "addresses": []}]}},
        "key_name": "ledger-checkpoint", "key_version": 1,
    }
    snapshot = {**body, "signature": EXAMPLE_KEY.sign(signing_message(body)).hex()}
    lines = [canonical_json({"snapshot": 1, "asset": "BTC", "index": n, "hash": leaf.hash.hex(),
                             "sum": str(leaf.total), "accounts": [account]}).decode()
             for n, (leaf, _, account) in enumerate(leaves)]
    index = next(n for n, (_, owner, _) in enumerate(leaves) if owner == "bob")
    proof = {
        "format": LIABILITY_PROOF_FORMAT, "version": LIABILITY_PROOF_VERSION, "asset": "BTC",
        "user_id": "bob", "salt": SALTS["bob"].hex(), "balance": str(leaves[index][0].total),
        "leaf_index": index, "tree_size": len(leaves),
        "path": [node.to_dict() for node in tree.proof(index)], "root": root.to_dict(),
        "snapshot": snapshot, "public_key": PUBLIC_KEY.hex(),
    }
    return snapshot, lines, proof


def main() -> None:
    """Print every example block."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, body in build(Path(tmp) / "export").items():
            print(f"{name}:\n{body}")


if __name__ == "__main__":
    main()
