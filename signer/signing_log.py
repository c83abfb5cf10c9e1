"""The signing log: an append-only, hash-chained record of everything signed.

One canonical JSON object per line. Each entry carries its sequence number,
the hash of the previous entry and its own hash (over all its other
fields), so editing, removing or reordering entries breaks the chain and the
signer refuses to sign until the log is restored. Someone who rewrites the
file and recomputes every hash, or cuts entries off the end, is caught only
against an outside record: `strongroom-signer log` prints the head hash for
the paper record, and the platform holds every signed result.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signer.canonical import canonical_bytes, parse_canonical, sha256_hex
from signer.fields import Fields
from signer.results import SignerCode, SignerError

GENESIS_SHA256 = "0" * 64
EVENT_SIGNED = "signed"
EVENT_ONLINE_OVERRIDE = "online_override"
MAX_LOG_ENTRIES = 1_000_000
_SIGNED_FIELDS = (
    "bundle_id",
    "bundle_sha256",
    "request",
    "chain",
    "network",
    "signer_id",
    "output_sha256",
    "summary",
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the log; `details` holds the event's own fields (all strings)."""

    seq: int
    prev_sha256: str
    at_ms: int
    event: str
    details: Mapping[str, str]

    def fields(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "prev_sha256": self.prev_sha256,
            "at_ms": self.at_ms,
            "event": self.event,
            **self.details,
        }

    @property
    def sha256(self) -> str:
        """Return the entry's hash: over its fields, which include the previous entry's hash."""
        return sha256_hex(canonical_bytes(self.fields()))

    def to_bytes(self) -> bytes:
        """Return the line (without newline): the fields plus their own hash."""
        return canonical_bytes({**self.fields(), "sha256": self.sha256})


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """What the log says about one signed bundle."""

    seq: int
    bundle_id: str
    bundle_sha256: str
    request: str
    output_sha256: str


@dataclass(frozen=True, slots=True)
class History:
    """Everything signed so far, by bundle id and by request ("withdrawal/<id>")."""

    by_bundle: Mapping[str, SignedRecord] = field(default_factory=dict)
    by_request: Mapping[str, SignedRecord] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: list[LogEntry]) -> History:
        by_bundle: dict[str, SignedRecord] = {}
        by_request: dict[str, SignedRecord] = {}
        for entry in entries:
            if entry.event != EVENT_SIGNED:
                continue
            d = entry.details
            record = SignedRecord(
                entry.seq, d["bundle_id"], d["bundle_sha256"], d["request"], d["output_sha256"]
            )
            by_bundle.setdefault(record.bundle_id, record)
            by_request.setdefault(record.request, record)
        return cls(by_bundle, by_request)


class SigningLog:
    """The log file; every read verifies the whole chain."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[LogEntry]:
        """Read and verify every entry; raise `SignerError` (7063) if the chain is broken."""
        if not self.path.exists():
            return []
        entries: list[LogEntry] = []
        prev = GENESIS_SHA256
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle):
                if number >= MAX_LOG_ENTRIES:
                    raise SignerError(SignerCode.LOG_CORRUPT, f"log has more than {MAX_LOG_ENTRIES} entries")
                entry = _parse_entry(line, number)
                if entry.seq != number or entry.prev_sha256 != prev:
                    raise SignerError(
                        SignerCode.LOG_CORRUPT,
                        f"log line {number + 1} does not chain: seq {entry.seq}, "
                        f"prev {entry.prev_sha256[:16]}..., "
                        f"expected seq {number}, prev {prev[:16]}... (the log was edited)",
                    )
                entries.append(entry)
                prev = entry.sha256
        return entries

    def history(self) -> History:
        return History.from_entries(self.entries())

    def head_sha256(self) -> str:
        entries = self.entries()
        return entries[-1].sha256 if entries else GENESIS_SHA256

    def append(self, event: str, at_ms: int, details: Mapping[str, str]) -> LogEntry:
        """Verify the chain, then append one entry and fsync before returning."""
        assert event in (EVENT_SIGNED, EVENT_ONLINE_OVERRIDE), f"unknown log event {event}"
        with self._locked():
            entries = self.entries()
            prev = entries[-1].sha256 if entries else GENESIS_SHA256
            entry = LogEntry(len(entries), prev, at_ms, event, dict(details))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, entry.to_bytes() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _parse_entry(line: bytes, number: int) -> LogEntry:
    if not line.endswith(b"\n"):
        raise SignerError(SignerCode.LOG_CORRUPT, f"log line {number + 1} is incomplete")
    try:
        document = parse_canonical(line[:-1], f"log line {number + 1}")
        f = Fields(document, f"log line {number + 1}", SignerCode.LOG_CORRUPT)
        seq, prev, at_ms = f.integer("seq"), f.hex_bytes("prev_sha256", 32).hex(), f.integer("at_ms")
        event = f.choice("event", (EVENT_SIGNED, EVENT_ONLINE_OVERRIDE))
        recorded = f.hex_bytes("sha256", 32).hex()
        details = _details(f, document)
        f.finish()
    except SignerError as exc:
        raise SignerError(SignerCode.LOG_CORRUPT, exc.refusal.message) from exc
    entry = LogEntry(seq, prev, at_ms, event, details)
    if entry.sha256 != recorded:
        raise SignerError(
            SignerCode.LOG_CORRUPT, f"log line {number + 1} does not match its own hash (edited)"
        )
    return entry


def _details(f: Fields, document: dict[str, Any]) -> dict[str, str]:
    details: dict[str, str] = {}
    for name in sorted(set(document) - {"seq", "prev_sha256", "at_ms", "event", "sha256"}):
        value = f.raw(name)
        if not isinstance(value, str):
            raise f.error(f"{name} must be a string")
        details[name] = value
    if document["event"] == EVENT_SIGNED and set(details) != set(_SIGNED_FIELDS):
        raise f.error(f"a signed entry must have exactly {', '.join(_SIGNED_FIELDS)}")
    return details
