"""Approvals: a signature by an approver's personal key over what is approved.

The signed message is a domain-separated SHA-256 digest over a canonical
length-prefixed binary encoding of the subject (kind, id, policy id, version
and rule, chain and network, source wallet, asset, amount, destination, fee
cap, document digest) and of the approval's validity period.
`docs/approvals.md` specifies the bytes.

Version 2 added the rule, chain, network, source wallet and fee cap: a
version 1 approval did not bind them (a testnet approval was byte-identical
to a mainnet one), so `Approval.from_bytes` refuses it with
`APPROVAL_OUTDATED_MESSAGE`; approvers sign again.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.identifier import MAX_ADDRESS_CHARS, check_identifier
from policies.results import PolicyError, ResultCode
from policies.signature_scheme import SignatureScheme
from policies.wire_format import MAX_U64, MAX_U256, Reader, Writer

APPROVAL_DOMAIN = "strongroom/approval/v2"
APPROVAL_MAGIC = b"SRAP"
APPROVAL_FORMAT_VERSION = 2
APPROVAL_OUTDATED_MESSAGE = (
    "approval format version 1 does not bind the chain, network, source wallet, fee cap and policy "
    "rule; it no longer counts: the approver must approve again"
)
SHA256_HEX_CHARS = 64
MAX_SIGNATURE_BYTES = 4096  # Room for WebAuthn assertions (authenticator data + client JSON).

_INVALID = ResultCode.APPROVAL_MALFORMED


class SubjectKind(enum.IntEnum):
    """What an approval is for; the number is what gets encoded."""

    WITHDRAWAL = 1
    REFILL = 2
    POLICY_CHANGE = 3


@dataclass(frozen=True, slots=True)
class TransferTerms:
    """The terms of a transfer besides asset, amount and destination, that approvers also bind."""

    rule_id: str
    chain: str
    network: str
    source_wallet: str
    fee_cap_minor: int


@dataclass(frozen=True, slots=True)
class ApprovalSubject:
    """Exactly what an approver agrees to.

    Withdrawals and refills name an asset, a positive amount and a
    destination and leave `document_sha256` empty; they also name the policy
    rule that required the approvals, the chain and network, the source
    wallet and the fee cap (in the chain's native minor unit). Those terms
    may be empty only where nobody outside the platform checks them (a hot
    withdrawal); the offline signer always requires all of them. Policy
    changes name the policy id, the proposed version and the SHA-256 (hex)
    of the proposed document, and leave every transfer field empty.
    """

    kind: SubjectKind
    subject_id: str
    policy_id: str
    policy_version: int
    asset: str = ""
    amount_minor: int = 0
    destination: str = ""
    document_sha256: str = ""
    rule_id: str = ""
    chain: str = ""
    network: str = ""
    source_wallet: str = ""
    fee_cap_minor: int = 0

    def __post_init__(self) -> None:
        check_identifier(self.subject_id, "subject_id", _INVALID)
        check_identifier(self.policy_id, "policy_id", _INVALID)
        _check_range(self.policy_version, "policy_version", 1, MAX_U64)
        if self.kind is SubjectKind.POLICY_CHANGE:
            self._check_policy_change()
        else:
            self._check_transfer()

    def _check_transfer(self) -> None:
        check_identifier(self.asset, "asset", _INVALID)
        _check_range(self.amount_minor, "amount_minor", 1, MAX_U256)
        check_identifier(self.destination, "destination", _INVALID, MAX_ADDRESS_CHARS)
        if self.document_sha256:
            raise PolicyError(_INVALID, f"document_sha256 must be empty for a {self.kind.name}")
        for name in ("rule_id", "chain", "network", "source_wallet"):
            if getattr(self, name):
                check_identifier(getattr(self, name), name, _INVALID)
        _check_range(self.fee_cap_minor, "fee_cap_minor", 0, MAX_U256)

    def with_terms(self, terms: TransferTerms | None) -> ApprovalSubject:
        """Return this subject binding `terms` (unchanged if None: nobody outside checks them)."""
        if terms is None:
            return self
        return replace(
            self,
            rule_id=terms.rule_id,
            chain=terms.chain,
            network=terms.network,
            source_wallet=terms.source_wallet,
            fee_cap_minor=terms.fee_cap_minor,
        )

    @property
    def binds_transfer_terms(self) -> bool:
        """Return True if the rule, chain, network and source wallet are all named (the signer needs it)."""
        return all((self.rule_id, self.chain, self.network, self.source_wallet))

    def _check_policy_change(self) -> None:
        transfer = (self.asset, self.amount_minor, self.destination, self.rule_id, self.chain)
        if any(transfer) or self.network or self.source_wallet or self.fee_cap_minor:
            raise PolicyError(
                _INVALID,
                "asset, amount_minor, destination, rule_id, chain, network, source_wallet and "
                "fee_cap_minor must be empty for a policy change",
            )
        digest = self.document_sha256
        if len(digest) != SHA256_HEX_CHARS or any(c not in "0123456789abcdef" for c in digest):
            raise PolicyError(
                _INVALID, f"document_sha256 was {digest!r}, must be 64 lowercase hex characters"
            )

    def write(self, writer: Writer) -> None:
        """Append the canonical encoding of this subject (format version 2)."""
        writer.u8(self.kind).text(self.subject_id).text(self.policy_id).u64(self.policy_version)
        writer.text(self.rule_id).text(self.chain).text(self.network).text(self.source_wallet)
        writer.text(self.asset).u256(self.amount_minor).text(self.destination)
        writer.u256(self.fee_cap_minor).text(self.document_sha256)

    @classmethod
    def read(cls, reader: Reader) -> ApprovalSubject:
        kind_value = reader.u8()
        if kind_value not in SubjectKind._value2member_map_:
            raise PolicyError(_INVALID, f"subject kind was {kind_value}, must be 1, 2 or 3")
        return cls(
            kind=SubjectKind(kind_value),
            subject_id=reader.text(),
            policy_id=reader.text(),
            policy_version=reader.u64(),
            rule_id=reader.text(),
            chain=reader.text(),
            network=reader.text(),
            source_wallet=reader.text(),
            asset=reader.text(),
            amount_minor=reader.u256(),
            destination=reader.text(),
            fee_cap_minor=reader.u256(),
            document_sha256=reader.text(),
        )

    def differences(self, other: ApprovalSubject) -> tuple[str, ...]:
        """Describe every field where `other` differs, for rejection messages."""
        return tuple(
            f"{f.name} was {getattr(other, f.name)!r}, this subject has {getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        )


def approval_digest(subject: ApprovalSubject, signed_at_ms: int, expires_at_ms: int) -> bytes:
    """Return the 32-byte digest an approver signs for `subject`."""
    writer = Writer().text(APPROVAL_DOMAIN)
    subject.write(writer)
    writer.u64(signed_at_ms).u64(expires_at_ms)
    return hashlib.sha256(writer.to_bytes()).digest()


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's signed consent to one subject, valid until `expires_at_ms`."""

    approver_id: str
    key_id: str
    scheme: SignatureScheme
    subject: ApprovalSubject
    signed_at_ms: int
    expires_at_ms: int
    signature: bytes

    def __post_init__(self) -> None:
        check_identifier(self.approver_id, "approver_id", _INVALID)
        check_identifier(self.key_id, "key_id", _INVALID)
        _check_range(self.signed_at_ms, "signed_at_ms", 0, MAX_U64)
        _check_range(self.expires_at_ms, "expires_at_ms", 0, MAX_U64)
        if self.expires_at_ms <= self.signed_at_ms:
            raise PolicyError(
                _INVALID,
                f"expires_at_ms was {self.expires_at_ms}, must be after signed_at_ms {self.signed_at_ms}",
            )
        if not 1 <= len(self.signature) <= MAX_SIGNATURE_BYTES:
            raise PolicyError(
                _INVALID,
                f"signature was {len(self.signature)} bytes, must be 1..{MAX_SIGNATURE_BYTES}",
            )

    @property
    def digest(self) -> bytes:
        """Return the digest this approval's signature should cover."""
        return approval_digest(self.subject, self.signed_at_ms, self.expires_at_ms)

    @property
    def approval_id(self) -> str:
        """Return the identity of this approval: SHA-256 hex of its canonical bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def to_bytes(self) -> bytes:
        writer = Writer().raw(APPROVAL_MAGIC).u8(APPROVAL_FORMAT_VERSION)
        writer.text(self.approver_id).text(self.key_id).text(self.scheme.value)
        self.subject.write(writer)
        writer.u64(self.signed_at_ms).u64(self.expires_at_ms).blob(self.signature)
        return writer.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Approval:
        """Parse an approval; reject unknown versions, unknown schemes and trailing bytes."""
        reader = Reader(data, "approval", _INVALID)
        reader.expect(APPROVAL_MAGIC)
        version = reader.u8()
        if version == 1:
            raise PolicyError(ResultCode.APPROVAL_OUTDATED, APPROVAL_OUTDATED_MESSAGE)
        if version != APPROVAL_FORMAT_VERSION:
            raise PolicyError(
                _INVALID, f"approval format version was {version}, must be {APPROVAL_FORMAT_VERSION}"
            )
        approver_id, key_id, scheme_name = reader.text(), reader.text(), reader.text()
        if scheme_name not in SignatureScheme._value2member_map_:
            raise PolicyError(ResultCode.APPROVAL_SCHEME_UNSUPPORTED, f"signature scheme was {scheme_name!r}")
        subject = ApprovalSubject.read(reader)
        signed_at_ms, expires_at_ms, signature = reader.u64(), reader.u64(), reader.blob()
        reader.finish()
        return cls(
            approver_id=approver_id,
            key_id=key_id,
            scheme=SignatureScheme(scheme_name),
            subject=subject,
            signed_at_ms=signed_at_ms,
            expires_at_ms=expires_at_ms,
            signature=signature,
        )


def current_approvals(stored: Iterable[bytes]) -> list[Approval]:
    """Parse stored approvals, leaving out outdated (format version 1) ones: they no longer count."""
    approvals = []
    for raw in stored:
        try:
            approvals.append(Approval.from_bytes(raw))
        except PolicyError as exc:
            if exc.code is not ResultCode.APPROVAL_OUTDATED:
                raise
    return approvals


def sign_approval(
    private_key: Ed25519PrivateKey,
    *,
    approver_id: str,
    key_id: str,
    subject: ApprovalSubject,
    signed_at_ms: int,
    expires_at_ms: int,
) -> Approval:
    """Sign `subject` with an approver's Ed25519 key (used by the approver CLI)."""
    digest = approval_digest(subject, signed_at_ms, expires_at_ms)
    return Approval(
        approver_id=approver_id,
        key_id=key_id,
        scheme=SignatureScheme.ED25519,
        subject=subject,
        signed_at_ms=signed_at_ms,
        expires_at_ms=expires_at_ms,
        signature=private_key.sign(digest),
    )


def _check_range(value: int, field: str, low: int, high: int) -> None:
    # bool is an int subclass; True must never be read as amount 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(_INVALID, f"{field} was {value!r}, must be an integer in {low}..{high}")
