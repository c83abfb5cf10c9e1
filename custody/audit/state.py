"""The auditor's memory between audits: the newest checkpoint (and snapshots) verified so far.

``strongroom-audit verify EXPORT --state FILE`` reads this file, requires the
new export to extend the checkpoint it names (the same checkpoint number with
the same hash, so the new tree is a consistent extension of the old one, as in
Certificate Transparency), and after a verified audit writes the new newest
checkpoint back. A truncated (rolled back) or rewritten (forked) ledger then
fails the next audit without anyone passing hashes by hand. The format is in
docs/ledger-export.md ("Audit state").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from custody.audit.untrusted import FormatError, read_json
from custody.ledger.entry import canonical_json

STATE_FORMAT = "strongroom.audit-state"
STATE_VERSION = 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
STATE_KEYS = frozenset({"format", "version", "checkpoint", "snapshots"})
CHECKPOINT_KEYS = frozenset({"number", "last_seq", "hash"})
# Snapshot hashes remembered by id, so a snapshot cannot silently change either.
MAX_SNAPSHOTS_REMEMBERED = 10_000


@dataclass(frozen=True)
class AuditState:
    """The newest verified checkpoint and the verified reserves snapshots (id -> hash)."""

    number: int
    last_seq: int
    checkpoint_hash: str
    snapshots: dict[int, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Return the canonical JSON bytes written to the state file."""
        return canonical_json({
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "checkpoint": {"number": self.number, "last_seq": self.last_seq,
                           "hash": self.checkpoint_hash},
            "snapshots": {str(k): v for k, v in sorted(self.snapshots.items())},
        }) + b"\n"

    @classmethod
    def from_dict(cls, data: object) -> AuditState:
        """Parse a state document strictly."""
        if not isinstance(data, dict) or set(data) != STATE_KEYS or (
                data["format"] != STATE_FORMAT or data["version"] != STATE_VERSION):
            raise FormatError(f"state file must be a {STATE_FORMAT} version {STATE_VERSION} document "
                              f"with exactly the keys {sorted(STATE_KEYS)}")
        checkpoint, snapshots = data["checkpoint"], data["snapshots"]
        if not isinstance(checkpoint, dict) or set(checkpoint) != CHECKPOINT_KEYS:
            raise FormatError(f"state checkpoint must have exactly {sorted(CHECKPOINT_KEYS)}")
        number, last_seq, digest = checkpoint["number"], checkpoint["last_seq"], checkpoint["hash"]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (number, last_seq)):
            raise FormatError("state checkpoint number and last_seq must be positive integers")
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise FormatError("state checkpoint hash must be 64 lowercase hex digits")
        if not isinstance(snapshots, dict) or len(snapshots) > MAX_SNAPSHOTS_REMEMBERED:
            raise FormatError("state snapshots must be an object of at most "
                              f"{MAX_SNAPSHOTS_REMEMBERED} snapshot hashes")
        remembered: dict[int, str] = {}
        for key, value in snapshots.items():
            if not key.isdigit() or not key.isascii() or not isinstance(value, str) or not HEX64.match(value):
                raise FormatError("state snapshots must map snapshot ids to 64-hex-digit hashes")
            remembered[int(key)] = value
        return cls(number, last_seq, digest, remembered)


def load_state(path: Path) -> AuditState | None:
    """Return the state in ``path``, or None if the file does not exist yet (a first audit)."""
    if not path.exists():
        return None
    return AuditState.from_dict(read_json(path, "state file"))


def save_state(path: Path, state: AuditState) -> None:
    """Write the state atomically (a crash leaves the old state or the new one, never half)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(state.to_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
