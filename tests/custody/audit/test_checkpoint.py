"""Checkpoints: canonical bytes, signing, and the service writing them every N entries and on demand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from custody.audit.checkpoint import CHECKPOINT_SIGNING_DOMAIN, Checkpoint
from custody.audit.codes import AuditCode, AuditError
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.service import AuditService
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger

from .helpers import accounts, first_batch, second_batch


@pytest.fixture
def audit(ledger: Ledger, keystore: LocalKeystore) -> AuditService:
    return AuditService(ledger._sessions, ledger, keystore)


def test_checkpoint_round_trips_and_rejects_non_canonical_bytes(ledger: Ledger, audit: AuditService) -> None:
    first_batch(ledger, accounts(ledger))
    checkpoint = audit.create_checkpoint()
    raw = checkpoint.to_bytes()
    assert Checkpoint.from_bytes(raw) == checkpoint
    for bad in (raw + b"\n", raw + b" ", b" " + raw, raw.replace(b'"v":1', b'"v":1,"x":1'),
                raw.replace(b":", b": ", 1)):
        with pytest.raises(ValueError):
            Checkpoint.from_bytes(bad)
    assert checkpoint.signing_message().startswith(CHECKPOINT_SIGNING_DOMAIN)
    assert b'"signature"' not in checkpoint.signing_message()


def test_signature_covers_every_field(ledger: Ledger, audit: AuditService, keystore: LocalKeystore) -> None:
    first_batch(ledger, accounts(ledger))
    checkpoint = audit.create_checkpoint()
    public_key = keystore.public_key("ledger-checkpoint")
    assert checkpoint.verify_signature(public_key)
    for changed in (replace(checkpoint, last_seq=7), replace(checkpoint, timestamp_ms=1),
                    replace(checkpoint, root="00" * 32), replace(checkpoint, key_version=2)):
        assert not changed.verify_signature(public_key)


def test_incremental_roots_equal_a_full_recomputation_on_every_database(
    ledger: Ledger, audit: AuditService
) -> None:
    ids = accounts(ledger)
    first_batch(ledger, ids)
    first = audit.create_checkpoint()
    second_batch(ledger, ids)
    second = audit.create_checkpoint()
    leaves = [leaf_hash(entry.to_bytes()) for entry, _ in ledger.journal(limit=100)]
    tree = MerkleTree(leaves)
    # Ten account openings, eight entries of the first batch, seven of the second.
    assert (first.root, second.root) == (tree.root(18).hex(), tree.root(25).hex())
    assert (second.first_seq, second.last_seq, second.prev_checkpoint) == (19, 25, first.hash())
    # The post of a hold made before checkpoint 1 releases 100 and posts 60.
    assert second.totals["BTC"].pending == 0
    assert second.totals["BTC"].posted == first.totals["BTC"].posted + 60 + sum(range(1, 7))


def test_checkpoint_every_n_entries(ledger: Ledger, audit: AuditService) -> None:
    ids = accounts(ledger)
    first_batch(ledger, ids)
    assert audit.checkpoint_if_due(19) is None
    made = audit.checkpoint_if_due(18)
    assert made is not None and made.last_seq == 18
    second_batch(ledger, ids)
    assert audit.checkpoint_if_due(8) is None
    assert audit.checkpoint_if_due(7) is not None


def test_nothing_new_is_refused(ledger: Ledger, audit: AuditService) -> None:
    with pytest.raises(AuditError) as empty:
        audit.create_checkpoint()
    assert empty.value.code is AuditCode.NO_NEW_ENTRIES
    first_batch(ledger, accounts(ledger))
    audit.create_checkpoint()
    with pytest.raises(AuditError, match="no entries since checkpoint 1"):
        audit.create_checkpoint()


def test_rotated_key_signs_new_checkpoints_and_old_ones_still_verify(
    ledger: Ledger, audit: AuditService, keystore: LocalKeystore
) -> None:
    ids = accounts(ledger)
    first_batch(ledger, ids)
    old = audit.create_checkpoint()
    keystore.rotate("ledger-checkpoint")
    second_batch(ledger, ids)
    new = audit.create_checkpoint()
    assert (old.key_version, new.key_version) == (1, 2)
    keys = {k.version: k.public_key for k in audit.public_keys()}
    assert old.verify_signature(keys[1]) and new.verify_signature(keys[2])
