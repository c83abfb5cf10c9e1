"""Regenerate the worked examples of docs/ledger-format.md and docs/ledger-export.md.

Run ``python tests/custody/audit/doc_examples.py`` and paste the blocks into the
docs after a format change; test_docs.py checks the pasted blocks. The key is
the documented example key (private bytes 0x00..0x1f), never a real one.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, AssetTotals, Checkpoint
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.proofs import inclusion_document
from custody.ledger.entry import GENESIS_HASH, Entry, TransferKind, chain_hash

EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
T0 = 1_767_225_600_000


def example_entries() -> list[Entry]:
    """Return the example journal: a deposit, a withdrawal hold and its post."""
    common = {"asset": "BTC", "code": 0, "actor": "service:deposits"}
    return [
        Entry(seq=1, id="deposit-alice-1", kind=TransferKind.SINGLE, debit_account=1,
              credit_account=3, amount=150_000_000, pending_id=None, timeout_s=0, expires_ms=None,
              reference="deposit", timestamp_ms=T0, **common),  # type: ignore[arg-type]
        Entry(seq=2, id="withdraw-alice-1", kind=TransferKind.PENDING, debit_account=3,
              credit_account=2, amount=50_000_000, pending_id=None, timeout_s=3600,
              expires_ms=T0 + 3_600_000, reference="withdrawal hold", timestamp_ms=T0,
              **{**common, "actor": "user:alice"}),  # type: ignore[arg-type]
        Entry(seq=3, id="withdraw-alice-1-post", kind=TransferKind.POST, debit_account=3,
              credit_account=2, amount=50_000_000, pending_id="withdraw-alice-1", timeout_s=0,
              expires_ms=None, reference="", timestamp_ms=T0 + 60_000,
              **{**common, "actor": "service:withdrawals"}),  # type: ignore[arg-type]
    ]


def main() -> None:
    """Print every example block."""
    entries = example_entries()
    raws = [e.to_bytes() for e in entries]
    print("entry (ledger-format.md):\n" + raws[0].decode())
    print("entry-hash:\n" + chain_hash(GENESIS_HASH, raws[0]))
    prev, lines = GENESIS_HASH, []
    for raw in raws:
        prev = chain_hash(prev, raw)
        lines.append(f"{prev} {raw.decode()}")
    print("entries.jsonl:\n" + "\n".join(lines))
    tree = MerkleTree(leaf_hash(raw) for raw in raws)
    unsigned = Checkpoint(number=1, first_seq=1, last_seq=3, root=tree.root().hex(), head_hash=prev,
                          prev_checkpoint=FIRST_PREV_CHECKPOINT,
                          totals={"BTC": AssetTotals(3, 200_000_000, 0)},
                          timestamp_ms=T0 + 100_000, key_name="ledger-checkpoint", key_version=1)
    checkpoint = unsigned.with_signature(EXAMPLE_KEY.sign(unsigned.signing_message()))
    print("checkpoints.jsonl:\n" + checkpoint.to_bytes().decode())
    print("checkpoint-hash:\n" + checkpoint.hash())
    print("inclusion-proof:\n" + json.dumps(inclusion_document(tree, raws[0], 1, 3, checkpoint),
                                            indent=2))


if __name__ == "__main__":
    main()
