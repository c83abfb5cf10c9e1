"""Signed ledger checkpoints: their canonical bytes, signing message, identity and totals (pure).

A checkpoint commits to the first ``last_seq`` journal entries: the RFC 6962
root over their canonical bytes, the chain hash of entry ``last_seq``, the
hash of the previous checkpoint and per-asset totals, signed with an Ed25519
key held by the keystore. The format is specified in docs/ledger-export.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody.ledger.entry import GENESIS_HASH, Entry, TransferKind, canonical_json

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_SIGNING_DOMAIN = b"strongroom.ledger.checkpoint.v1\x00"
CHECKPOINT_HASH_DOMAIN = b"strongroom.ledger.checkpoint-hash.v1\x00"
FIRST_PREV_CHECKPOINT = GENESIS_HASH
SIGNATURE_HEX_LEN = 128
ED25519_PUBLIC_KEY_BYTES = 32
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")
DIGITS = re.compile(r"^(0|[1-9][0-9]{0,77})$")
CHECKPOINT_KEYS = frozenset({
    "v", "number", "first_seq", "last_seq", "root", "head_hash", "prev_checkpoint", "totals",
    "timestamp_ms", "key_name", "key_version", "signature",
})
TOTALS_KEYS = frozenset({"entries", "posted", "pending"})


@dataclass(frozen=True, slots=True)
class AssetTotals:
    """Cumulative facts about one asset's entries up to a checkpoint.

    ``entries``: journal entries in the asset; ``posted``: the sum of single and
    post amounts (value ever moved); ``pending``: holds still outstanding.
    """

    entries: int = 0
    posted: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form (amounts as decimal strings)."""
        return {"entries": self.entries, "posted": str(self.posted), "pending": str(self.pending)}


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint. ``signature`` is empty until signed."""

    number: int
    first_seq: int
    last_seq: int
    root: str
    head_hash: str
    prev_checkpoint: str
    totals: Mapping[str, AssetTotals]
    timestamp_ms: int
    key_name: str
    key_version: int
    signature: str = field(default="")

    @property
    def tree_size(self) -> int:
        """Return the number of leaves the root covers (entries 1..last_seq)."""
        return self.last_seq

    def body_dict(self) -> dict[str, object]:
        """Return every field except the signature, as JSON values."""
        return {
            "v": CHECKPOINT_FORMAT_VERSION, "number": self.number, "first_seq": self.first_seq,
            "last_seq": self.last_seq, "root": self.root, "head_hash": self.head_hash,
            "prev_checkpoint": self.prev_checkpoint,
            "totals": {asset: t.to_dict() for asset, t in sorted(self.totals.items())},
            "timestamp_ms": self.timestamp_ms, "key_name": self.key_name,
            "key_version": self.key_version,
        }

    def signing_message(self) -> bytes:
        """Return the domain-separated bytes the keystore signs."""
        return CHECKPOINT_SIGNING_DOMAIN + canonical_json(self.body_dict())

    def to_dict(self) -> dict[str, object]:
        """Return the full JSON object, signature included."""
        return {**self.body_dict(), "signature": self.signature}

    def to_bytes(self) -> bytes:
        """Return the canonical bytes: sorted-key, whitespace-free ASCII JSON."""
        return canonical_json(self.to_dict())

    def hash(self) -> str:
        """Return the checkpoint's identity: hex SHA-256 over a domain tag and its canonical bytes."""
        return hashlib.sha256(CHECKPOINT_HASH_DOMAIN + self.to_bytes()).hexdigest()

    def with_signature(self, signature: bytes) -> Checkpoint:
        """Return a copy carrying ``signature``."""
        return replace(self, signature=signature.hex())

    def verify_signature(self, public_key: bytes) -> bool:
        """Return True if the signature is a valid Ed25519 signature by ``public_key``."""
        if len(public_key) != ED25519_PUBLIC_KEY_BYTES or not HEX128.match(self.signature):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                bytes.fromhex(self.signature), self.signing_message())
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        """Parse canonical bytes; anything else (extra keys, whitespace, trailing bytes) is rejected."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"checkpoint is not valid JSON: {exc}") from None
        checkpoint = cls.from_dict(data)
        if checkpoint.to_bytes() != raw:
            raise ValueError("checkpoint bytes are not in canonical form")
        return checkpoint

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        """Parse the JSON object of a checkpoint, checking every field's type and range."""
        if not isinstance(data, dict):
            raise ValueError("checkpoint must be a JSON object")
        if data.get("v") != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(f"checkpoint version was {data.get('v')!r}, must be "
                             f"{CHECKPOINT_FORMAT_VERSION}")
        if set(data) != CHECKPOINT_KEYS:
            raise ValueError(f"checkpoint keys were {sorted(data)}, must be {sorted(CHECKPOINT_KEYS)}")
        signature = _str(data, "signature")
        if signature and not HEX128.match(signature):
            raise ValueError("checkpoint signature must be 128 lowercase hex digits")
        checkpoint = cls(
            number=_int(data, "number"), first_seq=_int(data, "first_seq"),
            last_seq=_int(data, "last_seq"), root=_hex64(data, "root"),
            head_hash=_hex64(data, "head_hash"), prev_checkpoint=_hex64(data, "prev_checkpoint"),
            totals=_totals(data["totals"]), timestamp_ms=_int(data, "timestamp_ms"),
            key_name=_str(data, "key_name"), key_version=_int(data, "key_version"),
            signature=signature,
        )
        if not 1 <= checkpoint.first_seq <= checkpoint.last_seq or checkpoint.number < 1:
            raise ValueError(f"checkpoint {checkpoint.number} range was {checkpoint.first_seq}.."
                             f"{checkpoint.last_seq}, must be 1 <= first_seq <= last_seq")
        return checkpoint


def _int(data: Mapping[str, object], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"checkpoint {key} was {value!r}, must be a non-negative integer")
    return value


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"checkpoint {key} was {value!r}, must be a string")
    return value


def _hex64(data: Mapping[str, object], key: str) -> str:
    value = _str(data, key)
    if not HEX64.match(value):
        raise ValueError(f"checkpoint {key} was {value[:80]!r}, must be 64 lowercase hex digits")
    return value


def _totals(value: object) -> dict[str, AssetTotals]:
    if not isinstance(value, dict):
        raise ValueError("checkpoint totals must be an object keyed by asset")
    totals: dict[str, AssetTotals] = {}
    for asset, item in value.items():
        if not isinstance(item, dict) or set(item) != TOTALS_KEYS:
            raise ValueError(f"checkpoint totals for {asset} must have keys {sorted(TOTALS_KEYS)}")
        amounts = [item["posted"], item["pending"]]
        if not all(isinstance(a, str) and DIGITS.match(a) for a in amounts):
            raise ValueError(f"checkpoint totals for {asset}: amounts must be strings of digits")
        totals[asset] = AssetTotals(_int(item, "entries"), int(item["posted"]), int(item["pending"]))
    return totals


class TotalsAccumulator:
    """Running per-asset totals over entries in sequence order.

    A post releases the whole hold it resolves but may post less, so its
    caller passes the held amount (the pending entry's amount).
    """

    def __init__(self, start: Mapping[str, AssetTotals] | None = None) -> None:
        self._totals: dict[str, list[int]] = {
            asset: [t.entries, t.posted, t.pending] for asset, t in (start or {}).items()}

    def add(self, entry: Entry, held_amount: int = 0) -> None:
        """Account for one entry; ``held_amount`` is required for posts."""
        row = self._totals.get(entry.asset)
        if row is None:
            row = self._totals[entry.asset] = [0, 0, 0]
        add_totals(row, entry.kind, entry.amount, held_amount)

    def snapshot(self) -> dict[str, AssetTotals]:
        """Return the totals so far."""
        return {asset: AssetTotals(*row) for asset, row in sorted(self._totals.items())}


def add_totals(row: list[int], kind: str, amount: int, held_amount: int) -> None:
    """Update one asset's ``[entries, posted, pending]`` for an entry of ``kind``."""
    row[0] += 1
    if kind == TransferKind.SINGLE:
        row[1] += amount
    elif kind == TransferKind.PENDING:
        row[2] += amount
    elif kind == TransferKind.POST:
        row[1] += amount
        row[2] -= held_amount
    else:  # void and expire release the whole hold; their amount is the held amount
        row[2] -= amount
