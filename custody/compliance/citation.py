"""The signed ledger checkpoint a report rests on, or why there is none.

A statement or tax report is rebuilt from journal entries; the last of them
it reads has sequence number ``rests_on_seq``. The report cites the newest
signed checkpoint if that checkpoint covers the entry (``last_seq >=
rests_on_seq``) and its Ed25519 signature verifies under the checkpoint key
version it names. Otherwise the citation is null with a reason: a report
never names a checkpoint that does not vouch for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from custody.audit.checkpoint import Checkpoint
from custody.audit.service import AuditService

CITATION_FIELDS = ("checkpoint_number", "checkpoint_last_seq", "checkpoint_head_hash", "checkpoint_hash",
                   "checkpoint_timestamp_ms", "checkpoint_key_version", "checkpoint_reason")


@dataclass(frozen=True, slots=True)
class Citation:
    """The checkpoint a report rests on (all fields set) or ``reason`` why none is cited."""

    rests_on_seq: int
    number: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None
    checkpoint_hash: str | None = None
    timestamp_ms: int | None = None
    key_version: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        """Return ``{"rests_on_seq", "checkpoint": {...} | None, "checkpoint_reason": str | None}``."""
        checkpoint = None if self.number is None else {
            "number": self.number, "last_seq": self.last_seq, "head_hash": self.head_hash,
            "checkpoint_hash": self.checkpoint_hash, "timestamp_ms": self.timestamp_ms,
            "key_version": self.key_version}
        return {"rests_on_seq": self.rests_on_seq, "checkpoint": checkpoint, "checkpoint_reason": self.reason}

    def rows(self) -> list[tuple[str, object]]:
        """Return ``(field, value)`` rows for a CSV header; empty values when there is no checkpoint."""
        values = (self.number, self.last_seq, self.head_hash, self.checkpoint_hash, self.timestamp_ms,
                  self.key_version, self.reason)
        return [("rests_on_seq", self.rests_on_seq),
                *((name, "" if value is None else value) for name, value in zip(CITATION_FIELDS, values,
                                                                               strict=True))]

    def lines(self) -> list[str]:
        """Return the citation as text lines for a PDF."""
        if self.number is None:
            return [f"Rests on ledger entries up to seq {self.rests_on_seq}.",
                    f"No signed checkpoint cited: {self.reason}"]
        return [f"Rests on ledger entries up to seq {self.rests_on_seq}, covered by signed checkpoint "
                f"{self.number} (entries 1..{self.last_seq}, key version {self.key_version}).",
                f"Checkpoint head hash: {self.head_hash}",
                f"Checkpoint hash: {self.checkpoint_hash}"]


def cite(latest: Checkpoint | None, rests_on_seq: int, public_keys: Mapping[int, bytes]) -> Citation:
    """Cite ``latest`` for a report resting on entries up to ``rests_on_seq``, or say why not.

    ``public_keys`` maps checkpoint key versions to raw Ed25519 public keys.
    """
    if latest is None:
        return Citation(rests_on_seq, reason="no signed ledger checkpoint exists yet")
    if latest.last_seq < rests_on_seq:
        return Citation(rests_on_seq, reason=(f"the latest checkpoint ({latest.number}) covers entries up "
                                              f"to seq {latest.last_seq}; this report rests on seq "
                                              f"{rests_on_seq}"))
    key = public_keys.get(latest.key_version)
    if key is None or not latest.verify_signature(key):
        return Citation(rests_on_seq, reason=f"the latest checkpoint ({latest.number}) does not verify "
                                             f"under checkpoint key version {latest.key_version}")
    return Citation(rests_on_seq, latest.number, latest.last_seq, latest.head_hash, latest.hash(),
                    latest.timestamp_ms, latest.key_version)


def cite_latest(audit: AuditService, rests_on_seq: int) -> Citation:
    """Cite the audit service's newest checkpoint, verified under its own checkpoint public keys."""
    latest = audit.latest_checkpoint()
    keys = {k.version: k.public_key for k in audit.public_keys()}
    if latest is not None and latest.key_name != audit.key_name:
        keys = {}
    return cite(latest, rests_on_seq, keys)
