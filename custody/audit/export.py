"""The ledger export format, version 2: file names, records, and a writer (no database).

An export is a directory (docs/ledger-export.md)::

    manifest.json      format, version, head (seq, hash), record counts; written last
    entries.jsonl      one line per entry: 64 hex chain hash, a space, the canonical entry bytes
    checkpoints.jsonl  one canonical checkpoint per line, oldest first
    accounts.jsonl     one account per line: id, owner, asset, kind, flags, balances at the head
    keys.json          the checkpoint public keys (name, version, type, raw key as hex)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from custody.audit.checkpoint import Checkpoint
from custody.audit.untrusted import FormatError, printable
from custody.audit.untrusted import read_json as read_json
from custody.ledger.entry import Entry, canonical_json

EXPORT_FORMAT = "strongroom.ledger-export"
# Version 2: entries of format v2 (actor, account openings), strict verification.
EXPORT_VERSION = 2
MANIFEST_FILE = "manifest.json"
ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
ACCOUNTS_FILE = "accounts.jsonl"
KEYS_FILE = "keys.json"
SNAPSHOTS_FILE = "snapshots.jsonl"
LIABILITIES_FILE = "liabilities.jsonl"
KEYS_FORMAT = "strongroom.public-keys"
ED25519 = "ed25519"
FILES = {"entries": ENTRIES_FILE, "checkpoints": CHECKPOINTS_FILE, "accounts": ACCOUNTS_FILE,
         "keys": KEYS_FILE, "snapshots": SNAPSHOTS_FILE, "liabilities": LIABILITIES_FILE}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGITS = re.compile(r"^(0|[1-9][0-9]{0,77})$")
ACCOUNT_KEYS = frozenset({
    "id", "owner", "asset", "kind", "flags", "created_ms", "debits_pending", "debits_posted",
    "credits_pending", "credits_posted",
})
MANIFEST_KEYS = frozenset({"format", "version", "created_ms", "head", "files", "counts"})
COUNT_KEYS = frozenset({"entries", "checkpoints", "accounts", "snapshots"})
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A pinned checkpoint-signing public key: one version of one named key."""

    name: str
    version: int
    key_type: str
    public_key: bytes

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form (raw key as hex)."""
        return {"name": self.name, "version": self.version, "type": self.key_type,
                "public_key": self.public_key.hex()}


def keys_document(keys: Iterable[PublicKey]) -> dict[str, object]:
    """Return the keys.json document (also what ``GET /api/v1/audit/keys`` serves)."""
    ordered = sorted(keys, key=lambda k: (k.name, k.version))
    return {"format": KEYS_FORMAT, "version": 1, "keys": [k.to_dict() for k in ordered]}


def keys_fingerprint(keys: Iterable[PublicKey]) -> str:
    """Return the fingerprint read aloud in the key ceremony: SHA-256 of the canonical keys document.

    It depends only on the keys (name, version, type, public key), not on how a
    keys.json file happens to be formatted, so operator and auditor compute the
    same value independently (docs/ledger-export.md, "Key ceremony").
    """
    return hashlib.sha256(KEYS_FINGERPRINT_DOMAIN + canonical_json(keys_document(keys))).hexdigest()


KEYS_FINGERPRINT_DOMAIN = b"strongroom.public-keys.fingerprint.v1\x00"


def parse_keys(data: object) -> dict[tuple[str, int], PublicKey]:
    """Parse a keys.json document into ``{(name, version): key}``."""
    if not isinstance(data, dict) or data.get("format") != KEYS_FORMAT or data.get("version") != 1:
        raise FormatError(f"keys document must have format {KEYS_FORMAT!r} and version 1")
    items = data.get("keys")
    if not isinstance(items, list):
        raise FormatError("keys document must have a list of keys")
    keys: dict[tuple[str, int], PublicKey] = {}
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "version", "type", "public_key"}:
            raise FormatError("each key must have exactly name, version, type, public_key")
        name, version, key_type, raw = item["name"], item["version"], item["type"], item["public_key"]
        if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, int):
            raise FormatError(f"key {printable(str(name)[:80])!r}: name must be a string and version "
                              "an integer")
        if key_type != ED25519 or not isinstance(raw, str) or not HEX64.match(raw):
            raise FormatError(f"key {printable(name[:80])} v{version}: must be ed25519 with a "
                              "64-hex-digit public key")
        if (name, version) in keys:
            raise FormatError(f"key {printable(name[:80])} v{version} appears twice")
        keys[(name, version)] = PublicKey(name, version, key_type, bytes.fromhex(raw))
    return keys


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account as exported: identity, constraint flags and balances at the export head."""

    id: int
    owner: str
    asset: str
    kind: str
    flags: int
    created_ms: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form (amounts as decimal strings)."""
        return {"id": self.id, "owner": self.owner, "asset": self.asset, "kind": self.kind,
                "flags": self.flags, "created_ms": self.created_ms,
                **{name: str(getattr(self, name)) for name in BALANCE_FIELDS}}

    @classmethod
    def from_dict(cls, data: object) -> AccountRecord:
        """Parse one accounts.jsonl record strictly."""
        if not isinstance(data, dict) or set(data) != ACCOUNT_KEYS:
            raise FormatError(f"account must have exactly the keys {sorted(ACCOUNT_KEYS)}")
        for name in ("id", "flags", "created_ms"):
            if isinstance(data[name], bool) or not isinstance(data[name], int) or data[name] < 0:
                raise FormatError(f"account {name} must be a non-negative integer")
        for name in ("owner", "asset", "kind"):
            if not isinstance(data[name], str):
                raise FormatError(f"account {name} must be a string")
        for name in BALANCE_FIELDS:
            if not isinstance(data[name], str) or not DIGITS.match(data[name]):
                raise FormatError(f"account {data['id']} {name} must be a decimal string below 2^256")
            if int(data[name]) >= 2**256:
                raise FormatError(f"account {data['id']} {name} must be below 2^256")
        if data["flags"] not in (0, 1, 2):
            raise FormatError(f"account {data['id']} flags was {data['flags']}, must be 0, 1 or 2")
        return cls(data["id"], data["owner"], data["asset"], data["kind"], data["flags"],
                   data["created_ms"], *(int(data[name]) for name in BALANCE_FIELDS))


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the export claims to hold; unsigned, so every claim is re-checked."""

    created_ms: int
    head_seq: int
    head_hash: str
    entries: int
    checkpoints: int
    accounts: int
    snapshots: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form."""
        return {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "created_ms": self.created_ms,
            "head": {"seq": self.head_seq, "hash": self.head_hash}, "files": FILES,
            "counts": {"entries": self.entries, "checkpoints": self.checkpoints,
                       "accounts": self.accounts, "snapshots": self.snapshots},
        }

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Parse manifest.json, refusing unknown formats and versions."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise FormatError(f"manifest format must be {EXPORT_FORMAT!r}")
        if data.get("version") != EXPORT_VERSION:
            raise FormatError(f"export version was {data.get('version')!r}; this verifier reads "
                              f"version {EXPORT_VERSION}")
        if data.get("files") != FILES:
            raise FormatError(f"manifest files must be {FILES}")
        try:
            head, counts = data["head"], data["counts"]
            values = (data["created_ms"], head["seq"], counts["entries"], counts["checkpoints"],
                      counts["accounts"], counts["snapshots"])
            head_hash = head["hash"]
        except (KeyError, TypeError):
            raise FormatError("manifest must have created_ms, head {seq, hash} and counts") from None
        if set(data) != MANIFEST_KEYS or set(head) != {"seq", "hash"} or set(counts) != COUNT_KEYS:
            raise FormatError(f"manifest must have exactly {sorted(MANIFEST_KEYS)}, head {{seq, hash}} "
                              f"and counts {sorted(COUNT_KEYS)}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise FormatError("manifest numbers must be non-negative integers")
        if not isinstance(head_hash, str) or not HEX64.match(head_hash):
            raise FormatError("manifest head hash must be 64 lowercase hex digits")
        return cls(values[0], values[1], head_hash, values[2], values[3], values[4], values[5])


def entry_line(entry_hash: str, entry_bytes: bytes) -> bytes:
    """Return one entries.jsonl line: the chain hash, a space, the canonical bytes, LF."""
    return entry_hash.encode("ascii") + b" " + entry_bytes + b"\n"


class ExportWriter:
    """Write an export directory; the manifest goes last, so its presence marks a complete export."""

    def __init__(self, directory: Path) -> None:
        if directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"export directory {directory} is not empty")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def write_entries(self, pages: Iterable[Iterable[tuple[Entry, str]]]) -> tuple[int, int, str]:
        """Write entries page by page; return (count, last seq, last hash)."""
        count, last_seq, last_hash = 0, 0, "00" * 32
        with open(self.directory / ENTRIES_FILE, "wb") as out:
            for page in pages:
                lines = []
                for entry, entry_hash in page:
                    lines.append(entry_line(entry_hash, entry.to_bytes()))
                    count, last_seq, last_hash = count + 1, entry.seq, entry_hash
                out.write(b"".join(lines))
        return count, last_seq, last_hash

    def write_checkpoints(self, checkpoints: Iterable[Checkpoint]) -> int:
        """Write checkpoints oldest first; return how many."""
        lines = [c.to_bytes() + b"\n" for c in checkpoints]
        (self.directory / CHECKPOINTS_FILE).write_bytes(b"".join(lines))
        return len(lines)

    def write_accounts(self, accounts: Iterable[AccountRecord]) -> int:
        """Write accounts by id; return how many."""
        lines = [canonical_json(a.to_dict()) + b"\n" for a in sorted(accounts, key=lambda a: a.id)]
        (self.directory / ACCOUNTS_FILE).write_bytes(b"".join(lines))
        return len(lines)

    def write_lines(self, name: str, records: Iterable[bytes]) -> int:
        """Write one canonical record per line to ``name``; return how many."""
        count = 0
        with open(self.directory / name, "wb") as out:
            for record in records:
                out.write(record + b"\n")
                count += 1
        return count

    def write_keys(self, keys: Iterable[PublicKey]) -> None:
        """Write keys.json."""
        (self.directory / KEYS_FILE).write_text(json.dumps(keys_document(keys), indent=2) + "\n")

    def write_manifest(self, manifest: Manifest) -> None:
        """Write manifest.json (call last)."""
        (self.directory / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")



