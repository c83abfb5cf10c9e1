"""Journal entries: their canonical bytes and the hash chain (pure, no database).

The format is specified in docs/ledger-format.md; auditors re-implement it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import IntFlag, StrEnum
from json.encoder import encode_basestring_ascii as _json_str

# Version 2 added ``actor``; the verifier reads version 2 only (no version 1 data was ever
# produced outside tests, see docs/ledger-format.md).
ENTRY_FORMAT_VERSION = 2
ENTRY_HASH_DOMAIN = b"strongroom.ledger.entry.v1\x00"
GENESIS_HASH = "00" * 32
# Who caused an entry: ``user:<id or name>`` for a person, ``service:<name>`` for a component.
ACTOR_PATTERN = re.compile(r"^(user|service):[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
ACTOR_MAX_LEN = 136
SERVICE_ACTOR = "service:ledger"
ACCOUNT_OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
EXPIRY_ACTOR = "service:ledger-expiry"


def valid_actor(actor: object) -> bool:
    """Tell whether ``actor`` is a well-formed ``user:...`` or ``service:...`` actor string."""
    # fullmatch: with match, "$" also accepts a trailing newline ("user:1\n").
    return isinstance(actor, str) and ACTOR_PATTERN.fullmatch(actor) is not None


class TransferKind(StrEnum):
    """What a journal entry does to balances."""

    SINGLE = "single"  # posted immediately
    PENDING = "pending"  # reserves funds until posted, voided or expired
    POST = "post"  # posts (all or part of) a pending transfer
    VOID = "void"  # releases a pending transfer
    EXPIRE = "expire"  # releases a pending transfer whose timeout passed
    OPEN = "open"  # opens an account: its owner, asset, kind and flags (amount 0)


RESOLVING_KINDS = frozenset({TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE})


class AccountFlags(IntFlag):
    """Balance constraints an account enforces on every transfer."""

    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class AccountKind(StrEnum):
    """What an account represents; the kind sets its default constraint."""

    USER_AVAILABLE = "user_available"
    USER_HELD = "user_held"
    USER_MARGIN = "user_margin"
    HOT_WALLET = "hot_wallet"
    COLD_WALLET = "cold_wallet"
    DEPOSITS_IN_FLIGHT = "deposits_in_flight"
    WITHDRAWALS_IN_FLIGHT = "withdrawals_in_flight"
    FEES = "fees"
    INSURANCE_FUND = "insurance_fund"
    EXTERNAL = "external"


# Liabilities (what we owe) are credit-normal and must never go negative;
# wallets (what we hold) are debit-normal and cannot send more than they hold.
# Exchange margin accounts are the exception: under cross margin a wallet balance
# may dip below zero while unrealised gains keep equity positive, so the clearing
# house (not a ledger flag) enforces margin there. Each kind has exactly one
# permitted value: the ledger refuses any other, and the auditor checks every
# account's opening entry against this table (docs/ledger-format.md).
DEFAULT_FLAGS: dict[AccountKind, AccountFlags] = {
    AccountKind.USER_AVAILABLE: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountKind.USER_HELD: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountKind.USER_MARGIN: AccountFlags.NONE,
    AccountKind.HOT_WALLET: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountKind.COLD_WALLET: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountKind.DEPOSITS_IN_FLIGHT: AccountFlags.NONE,
    AccountKind.WITHDRAWALS_IN_FLIGHT: AccountFlags.NONE,
    AccountKind.FEES: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountKind.INSURANCE_FUND: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountKind.EXTERNAL: AccountFlags.NONE,
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One applied transfer as it appears in the journal."""

    seq: int
    id: str
    kind: TransferKind
    debit_account: int
    credit_account: int
    asset: str
    amount: int
    pending_id: str | None
    timeout_s: int
    expires_ms: int | None
    code: int
    reference: str
    timestamp_ms: int
    actor: str
    # Only an ``open`` entry carries the terms of the account it opens.
    account_owner: str | None = None
    account_kind: str | None = None
    account_flags: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the entry as the JSON object of its canonical form (amount as a string)."""
        terms: dict[str, object] = {} if self.kind is not TransferKind.OPEN else {
            "account_owner": self.account_owner, "account_kind": self.account_kind,
            "account_flags": self.account_flags}
        return {
            **terms,
            "v": ENTRY_FORMAT_VERSION,
            "actor": self.actor,
            "seq": self.seq,
            "id": self.id,
            "kind": self.kind.value,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "asset": self.asset,
            "amount": str(self.amount),
            "pending_id": self.pending_id,
            "timeout_s": self.timeout_s,
            "expires_ms": self.expires_ms,
            "code": self.code,
            "reference": self.reference,
            "timestamp_ms": self.timestamp_ms,
        }

    def to_bytes(self) -> bytes:
        """Return the canonical bytes: sorted-key, whitespace-free, ASCII-only JSON.

        This is ``canonical_json(self.to_dict())`` written out by hand because it
        sits on the ledger's hot path; a property test holds the two equal.
        """
        pending = "null" if self.pending_id is None else _json_str(self.pending_id)
        expires = "null" if self.expires_ms is None else str(self.expires_ms)
        terms = "" if self.kind is not TransferKind.OPEN else (
            f'"account_flags":{self.account_flags},"account_kind":{_json_str(str(self.account_kind))},'
            f'"account_owner":{_json_str(str(self.account_owner))},')
        return (
            f'{{{terms}"actor":{_json_str(self.actor)},"amount":"{self.amount}",'
            f'"asset":{_json_str(self.asset)},"code":{self.code},'
            f'"credit_account":{self.credit_account},"debit_account":{self.debit_account},'
            f'"expires_ms":{expires},"id":{_json_str(self.id)},"kind":"{self.kind.value}",'
            f'"pending_id":{pending},"reference":{_json_str(self.reference)},"seq":{self.seq},'
            f'"timeout_s":{self.timeout_s},"timestamp_ms":{self.timestamp_ms},'
            f'"v":{ENTRY_FORMAT_VERSION}}}'
        ).encode("ascii")

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Entry:
        """Parse an entry from its canonical JSON object, rejecting unknown versions and keys."""
        if data.get("v") != ENTRY_FORMAT_VERSION:
            raise ValueError(f"entry version was {data.get('v')!r}, must be {ENTRY_FORMAT_VERSION}")
        expected = set(ENTRY_KEYS) | (OPEN_KEYS if data.get("kind") == TransferKind.OPEN else set())
        if set(data) != expected:
            raise ValueError(f"entry keys were {sorted(data)}, must be {sorted(expected)}")
        amount = data["amount"]
        if not isinstance(amount, str) or not AMOUNT_PATTERN.match(amount):
            raise ValueError(f"entry amount was {str(amount)[:90]!r}, must be a canonical decimal "
                             "string below 2^256")
        if int(amount) >= AMOUNT_LIMIT:
            raise ValueError("entry amount must be below 2^256")
        if not valid_actor(data["actor"]):
            raise ValueError(f"entry actor was {str(data['actor'])[:140]!r}, must be user:<id> or "
                             "service:<name>")
        return cls(
            seq=_int(data, "seq"),
            id=_str(data, "id"),
            kind=TransferKind(_str(data, "kind")),
            debit_account=_int(data, "debit_account"),
            credit_account=_int(data, "credit_account"),
            asset=_str(data, "asset"),
            amount=int(amount),
            pending_id=None if data["pending_id"] is None else _str(data, "pending_id"),
            timeout_s=_int(data, "timeout_s"),
            expires_ms=None if data["expires_ms"] is None else _int(data, "expires_ms"),
            code=_int(data, "code"),
            reference=_str(data, "reference"),
            timestamp_ms=_int(data, "timestamp_ms"),
            actor=_str(data, "actor"),
            **_terms(data),  # type: ignore[arg-type]
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        """Parse canonical bytes; bytes that are not exactly canonical are rejected."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("entry JSON is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("an entry must be a JSON object")
        entry = cls.from_dict(data)
        if entry.to_bytes() != raw:
            raise ValueError("entry bytes are not in canonical form")
        return entry


AMOUNT_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,77})$")
AMOUNT_LIMIT = 2**256

ENTRY_KEYS = (
    "v", "actor", "seq", "id", "kind", "debit_account", "credit_account", "asset", "amount",
    "pending_id", "timeout_s", "expires_ms", "code", "reference", "timestamp_ms",
)


OPEN_KEYS = frozenset({"account_owner", "account_kind", "account_flags"})


def _terms(data: dict[str, object]) -> dict[str, object]:
    if data["kind"] != TransferKind.OPEN:
        return {}
    return {"account_owner": _str(data, "account_owner"), "account_kind": _str(data, "account_kind"),
            "account_flags": _int(data, "account_flags")}


def open_entry_id(account_id: int) -> str:
    """Return the journal id of the entry that opens account ``account_id``.

    Callers cannot use the ``open:`` prefix for transfer ids, so it never collides.
    """
    return f"{OPEN_ID_PREFIX}{account_id}"


OPEN_ID_PREFIX = "open:"


def _int(data: dict[str, object], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"entry {key} was {value!r}, must be an integer")
    return value


def _str(data: dict[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"entry {key} was {value!r}, must be a string")
    return value


def canonical_json(obj: object) -> bytes:
    """Serialise ``obj`` deterministically: sorted keys, no whitespace, ASCII escapes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_hash(prev_hash_hex: str, entry_bytes: bytes) -> str:
    """Return the hex hash of an entry chained to its predecessor's hash."""
    digest = hashlib.sha256(ENTRY_HASH_DOMAIN)
    digest.update(bytes.fromhex(prev_hash_hex))
    digest.update(entry_bytes)
    return digest.hexdigest()
