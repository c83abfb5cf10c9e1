"""The unsigned bundle: what the platform asks the offline signer to sign.

A bundle is a canonical JSON document (see `signer.canonical` and
docs/bundle-format.md): a body (request, policy, intent, unsigned
transaction, approvals, validity) and the platform's Ed25519 signature over
`SIGNING_DOMAIN || canonical(body)`. Its identity is the SHA-256 of its
canonical bytes. `Bundle.from_bytes` rejects unknown versions, duplicate
keys, unknown fields, non-canonical encodings and trailing bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_utils.address import is_checksum_address

from policies.approval import Approval, ApprovalSubject, SubjectKind
from policies.results import PolicyError, ResultCode
from policies.wire_format import MAX_U64, MAX_U256
from signer.canonical import MAX_JSON_INT, canonical_bytes, parse_strict, sha256_hex
from signer.fields import Fields
from signer.results import SignerCode, SignerError

BUNDLE_FORMAT = "strongroom-signer-bundle"
BUNDLE_VERSION = 2
SIGNING_DOMAIN = b"strongroom/bundle/v2\n"
ED25519_SIGNATURE_BYTES = 64
MAX_APPROVALS = 16
MAX_BUNDLE_LIFETIME_MS = 30 * 24 * 3600 * 1000
MAX_PSBT_BASE64_CHARS = 1_000_000
MAX_ETHEREUM_DATA_BYTES = 4096
BITCOIN_NETWORKS = ("main", "test", "regtest", "signet")
# nSequence of every input, by the bundle's stated intent: replaceable (BIP 125) or final.
SEQUENCE_RBF = "rbf"
SEQUENCE_FINAL = "final"
SEQUENCE_VALUES = {SEQUENCE_RBF: 0xFFFFFFFD, SEQUENCE_FINAL: 0xFFFFFFFF}
# Why a version 1 bundle is refused (its approvals did not bind chain, network, wallet, fee cap, rule).
VERSION_1_MESSAGE = (
    "bundle version 1 is no longer accepted: its approvals do not bind the chain, network, source "
    "wallet, fee cap and policy rule, and its PSBT need not prove input amounts. Export the request "
    "again from an upgraded platform (its approvers approve again)"
)

_MALFORMED = SignerCode.BUNDLE_MALFORMED


class Chain(enum.StrEnum):
    BITCOIN = "bitcoin"
    ETHEREUM = "ethereum"


_REQUEST_KINDS = {"withdrawal": SubjectKind.WITHDRAWAL, "refill": SubjectKind.REFILL}


@dataclass(frozen=True, slots=True)
class RequestRef:
    """The platform request this bundle executes, and who initiated it (who may not approve it)."""

    kind: SubjectKind
    request_id: str
    initiator_id: str

    def __post_init__(self) -> None:
        if self.kind not in _REQUEST_KINDS.values():
            raise SignerError(_MALFORMED, f"request kind was {self.kind.name}, must be withdrawal or refill")

    @property
    def key(self) -> str:
        """Return "withdrawal/<id>": at most one bundle per request is ever signed."""
        return f"{self.kind.name.lower()}/{self.request_id}"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind.name.lower(), "id": self.request_id, "initiator_id": self.initiator_id}

    @classmethod
    def from_json(cls, f: Fields) -> RequestRef:
        kind = _REQUEST_KINDS[f.choice("kind", tuple(_REQUEST_KINDS))]
        ref = cls(kind, f.text("id"), f.text("initiator_id"))
        f.finish()
        return ref


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy version that decided the request, and the rule that required approvals."""

    policy_id: str
    policy_version: int
    rule: str

    def to_json(self) -> dict[str, object]:
        return {"policy_id": self.policy_id, "version": self.policy_version, "rule": self.rule}

    @classmethod
    def from_json(cls, f: Fields) -> PolicyRef:
        ref = cls(f.text("policy_id"), f.integer("version", 1), f.text("rule"))
        f.finish()
        return ref


@dataclass(frozen=True, slots=True)
class Intent:
    """What the humans approved, in plain terms. Amounts are integer minor units.

    `fee_cap_minor` is in the chain's native minor unit (satoshi, wei), also
    for token transfers.
    """

    source_wallet: str
    asset: str
    destination: str
    amount_minor: int
    fee_cap_minor: int

    def __post_init__(self) -> None:
        if not 1 <= self.amount_minor <= MAX_U256:
            raise SignerError(_MALFORMED, f"intent amount_minor was {self.amount_minor}, must be positive")
        if not 0 <= self.fee_cap_minor <= MAX_U256:
            raise SignerError(_MALFORMED, f"intent fee_cap_minor was {self.fee_cap_minor}, must be >= 0")

    def to_json(self) -> dict[str, object]:
        return {
            "source_wallet": self.source_wallet,
            "asset": self.asset,
            "destination": self.destination,
            "amount_minor": str(self.amount_minor),
            "fee_cap_minor": str(self.fee_cap_minor),
        }

    @classmethod
    def from_json(cls, f: Fields) -> Intent:
        intent = cls(
            source_wallet=f.text("source_wallet"),
            asset=f.text("asset"),
            destination=f.address("destination"),
            amount_minor=f.amount("amount_minor", 1),
            fee_cap_minor=f.amount("fee_cap_minor"),
        )
        f.finish()
        return intent


@dataclass(frozen=True, slots=True)
class BitcoinTransaction:
    """An unsigned PSBT (BIP 174), base64, and the stated nLockTime and nSequence intent.

    Every input carries its full previous transaction (non_witness_utxo),
    its witness script and the key origins of all cosigners. `locktime` is
    always 0 (no time-locked spends); `sequence` is "rbf" (every input
    0xFFFFFFFD) or "final" (0xFFFFFFFF). The signer refuses a PSBT whose
    fields differ from what is stated here.
    """

    psbt_base64: str
    locktime: int = 0
    sequence: str = SEQUENCE_RBF
    TYPE: ClassVar[str] = "bitcoin_psbt"

    def __post_init__(self) -> None:
        if self.locktime != 0 or isinstance(self.locktime, bool):
            raise SignerError(_MALFORMED, f"bitcoin locktime was {self.locktime!r}, must be 0")
        if self.sequence not in SEQUENCE_VALUES:
            raise SignerError(
                _MALFORMED, f"bitcoin sequence was {self.sequence!r}, must be one of {tuple(SEQUENCE_VALUES)}"
            )
        if not 1 <= len(self.psbt_base64) <= MAX_PSBT_BASE64_CHARS:
            raise SignerError(_MALFORMED, f"psbt was {len(self.psbt_base64)} characters")
        try:
            raw = base64.b64decode(self.psbt_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignerError(_MALFORMED, "psbt is not valid base64") from exc
        if base64.b64encode(raw).decode("ascii") != self.psbt_base64:
            raise SignerError(_MALFORMED, "psbt base64 is not in canonical (padded, standard) form")

    @property
    def sequence_value(self) -> int:
        """Return the nSequence every input must carry."""
        return SEQUENCE_VALUES[self.sequence]

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.TYPE,
            "psbt": self.psbt_base64,
            "locktime": self.locktime,
            "sequence": self.sequence,
        }

    @classmethod
    def from_json(cls, f: Fields) -> BitcoinTransaction:
        tx = cls(
            f.string("psbt", MAX_PSBT_BASE64_CHARS),
            f.integer("locktime", 0, 0),
            f.choice("sequence", tuple(SEQUENCE_VALUES)),
        )
        f.finish()
        return tx


@dataclass(frozen=True, slots=True)
class EthereumTransaction:
    """The fields of an unsigned EIP-1559 (type 2) transaction; addresses in EIP-55 form."""

    chain_id: int
    nonce: int
    sender: str
    to: str
    value_wei: int
    data: bytes
    gas_limit: int
    max_fee_per_gas_wei: int
    max_priority_fee_per_gas_wei: int
    TYPE: ClassVar[str] = "ethereum_eip1559"

    def __post_init__(self) -> None:
        for name in ("sender", "to"):
            value = getattr(self, name)
            if not isinstance(value, str) or not is_checksum_address(value):
                raise SignerError(_MALFORMED, f"ethereum {name} was {value!r}, must be an EIP-55 address")
        if len(self.data) > MAX_ETHEREUM_DATA_BYTES:
            raise SignerError(_MALFORMED, f"ethereum data was {len(self.data)} bytes")
        if self.max_priority_fee_per_gas_wei > self.max_fee_per_gas_wei:
            raise SignerError(
                _MALFORMED,
                f"max_priority_fee_per_gas_wei {self.max_priority_fee_per_gas_wei} exceeds "
                f"max_fee_per_gas_wei {self.max_fee_per_gas_wei}",
            )

    @property
    def max_fee_wei(self) -> int:
        """Return the most this transaction can cost in fees: gas limit times max fee per gas."""
        return self.gas_limit * self.max_fee_per_gas_wei

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.TYPE,
            "chain_id": self.chain_id,
            "nonce": self.nonce,
            "from": self.sender,
            "to": self.to,
            "value_wei": str(self.value_wei),
            "data": self.data.hex(),
            "gas_limit": self.gas_limit,
            "max_fee_per_gas_wei": str(self.max_fee_per_gas_wei),
            "max_priority_fee_per_gas_wei": str(self.max_priority_fee_per_gas_wei),
        }

    @classmethod
    def from_json(cls, f: Fields) -> EthereumTransaction:
        tx = cls(
            chain_id=f.integer("chain_id", 1),
            nonce=f.integer("nonce", 0, MAX_JSON_INT),
            sender=f.text("from"),
            to=f.text("to"),
            value_wei=f.amount("value_wei"),
            data=f.hex_bytes("data", max_length=MAX_ETHEREUM_DATA_BYTES),
            gas_limit=f.integer("gas_limit", 21_000, 30_000_000),
            max_fee_per_gas_wei=f.amount("max_fee_per_gas_wei", 1),
            max_priority_fee_per_gas_wei=f.amount("max_priority_fee_per_gas_wei"),
        )
        f.finish()
        return tx


Transaction = BitcoinTransaction | EthereumTransaction
_TX_TYPES: dict[Chain, type[BitcoinTransaction] | type[EthereumTransaction]] = {
    Chain.BITCOIN: BitcoinTransaction,
    Chain.ETHEREUM: EthereumTransaction,
}


@dataclass(frozen=True, slots=True)
class BundleBody:
    """Everything the platform signs. The platform builds it with `custody.bundles.builder.build_bundle`."""

    bundle_id: str
    chain: Chain
    network: str
    created_at_ms: int
    expires_at_ms: int
    request: RequestRef
    policy: PolicyRef
    intent: Intent
    transaction: Transaction
    approvals: tuple[Approval, ...]

    def __post_init__(self) -> None:
        if self.chain is Chain.BITCOIN and self.network not in BITCOIN_NETWORKS:
            raise SignerError(
                _MALFORMED, f"bitcoin network was {self.network!r}, must be one of {BITCOIN_NETWORKS}"
            )
        if not isinstance(self.transaction, _TX_TYPES[self.chain]):
            raise SignerError(
                _MALFORMED, f"a {self.chain} bundle cannot carry a {type(self.transaction).__name__}"
            )
        if not 0 <= self.created_at_ms < self.expires_at_ms <= MAX_U64:
            raise SignerError(
                _MALFORMED,
                f"expires_at_ms {self.expires_at_ms} must be after created_at_ms {self.created_at_ms}",
            )
        if self.expires_at_ms - self.created_at_ms > MAX_BUNDLE_LIFETIME_MS:
            raise SignerError(_MALFORMED, f"bundle lifetime exceeds {MAX_BUNDLE_LIFETIME_MS} ms")
        if len(self.approvals) > MAX_APPROVALS:
            raise SignerError(_MALFORMED, f"{len(self.approvals)} approvals, at most {MAX_APPROVALS}")

    def subject(self) -> ApprovalSubject:
        """Return the approval subject this bundle's intent stands for.

        It binds the request kind and id, the policy id, version and rule,
        the chain and network, the source wallet, the asset, the amount, the
        destination and the fee cap: an approval only counts for exactly these.
        """
        try:
            return ApprovalSubject(
                kind=self.request.kind,
                subject_id=self.request.request_id,
                policy_id=self.policy.policy_id,
                policy_version=self.policy.policy_version,
                rule_id=self.policy.rule,
                chain=self.chain.value,
                network=self.network,
                source_wallet=self.intent.source_wallet,
                asset=self.intent.asset,
                amount_minor=self.intent.amount_minor,
                destination=self.intent.destination,
                fee_cap_minor=self.intent.fee_cap_minor,
            )
        except PolicyError as exc:
            raise SignerError(
                _MALFORMED, f"intent is not a valid approval subject: {exc.message}", exc.code
            ) from exc

    def to_json(self) -> dict[str, object]:
        return {
            "bundle_id": self.bundle_id,
            "chain": self.chain.value,
            "network": self.network,
            "created_at_ms": self.created_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "request": self.request.to_json(),
            "policy": self.policy.to_json(),
            "intent": self.intent.to_json(),
            "transaction": self.transaction.to_json(),
            "approvals": [approval.to_bytes().hex() for approval in self.approvals],
        }

    @classmethod
    def from_json(cls, f: Fields) -> BundleBody:
        chain = Chain(f.choice("chain", tuple(c.value for c in Chain)))
        tx_fields = f.obj("transaction")
        tx_type = _TX_TYPES[chain]
        tx_fields.choice("type", (tx_type.TYPE,))
        body = cls(
            bundle_id=f.text("bundle_id"),
            chain=chain,
            network=f.text("network"),
            created_at_ms=f.integer("created_at_ms"),
            expires_at_ms=f.integer("expires_at_ms"),
            request=RequestRef.from_json(f.obj("request")),
            policy=PolicyRef.from_json(f.obj("policy")),
            intent=Intent.from_json(f.obj("intent")),
            transaction=tx_type.from_json(tx_fields),
            approvals=tuple(_approval(item, i) for i, item in enumerate(f.array("approvals", MAX_APPROVALS))),
        )
        f.finish()
        return body


def _approval(item: object, index: int) -> Approval:
    holder = Fields({"approval": item}, f"body.approvals[{index}]")
    raw = holder.hex_bytes("approval")
    try:
        return Approval.from_bytes(raw)
    except PolicyError as exc:
        code = SignerCode.APPROVAL_OUTDATED if exc.code is ResultCode.APPROVAL_OUTDATED else _MALFORMED
        raise SignerError(code, f"approval #{index}: {exc.message}", exc.code) from exc


def signing_message(body: BundleBody) -> bytes:
    """Return the bytes the platform key signs: the domain, then the canonical body."""
    return SIGNING_DOMAIN + canonical_bytes(body.to_json())


@dataclass(frozen=True, slots=True)
class Bundle:
    """A platform-signed bundle, as carried to the offline signer."""

    body: BundleBody
    platform_key_id: str
    platform_signature: bytes

    def __post_init__(self) -> None:
        if len(self.platform_signature) != ED25519_SIGNATURE_BYTES:
            raise SignerError(
                _MALFORMED, f"platform signature was {len(self.platform_signature)} bytes, must be 64"
            )

    @property
    def digest(self) -> str:
        """Return the bundle's identity: SHA-256 hex of its canonical bytes."""
        return sha256_hex(self.to_bytes())

    def to_json(self) -> dict[str, object]:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "body": self.body.to_json(),
            "platform_signature": {
                "key_id": self.platform_key_id,
                "signature": self.platform_signature.hex(),
            },
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        """Parse a bundle; raise `SignerError` with a 700x code if it is not exactly one valid bundle."""
        document = parse_strict(data, "bundle")
        check_version(document, BUNDLE_FORMAT, BUNDLE_VERSION, "bundle")
        if canonical_bytes(document) != data:
            raise SignerError(
                SignerCode.BUNDLE_NOT_CANONICAL,
                "bundle is not in canonical form (sorted keys, no whitespace, ASCII, amounts as strings)",
            )
        return cls.from_json(document)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Bundle:
        f = Fields(document, "bundle")
        f.raw("format")
        f.raw("version")
        signature = f.obj("platform_signature")
        bundle = cls(
            body=BundleBody.from_json(f.obj("body")),
            platform_key_id=signature.text("key_id"),
            platform_signature=signature.hex_bytes("signature", ED25519_SIGNATURE_BYTES),
        )
        signature.finish()
        f.finish()
        return bundle


def check_version(document: dict[str, Any], expected_format: str, expected_version: int, what: str) -> None:
    """Check format and version first, so a future version is refused as such, not as malformed."""
    if document.get("format") != expected_format:
        raise SignerError(
            _MALFORMED, f"{what} format was {document.get('format')!r}, must be {expected_format!r}"
        )
    version = document.get("version")
    if what == "bundle" and version == 1 and not isinstance(version, bool):
        raise SignerError(SignerCode.BUNDLE_VERSION_UNSUPPORTED, VERSION_1_MESSAGE)
    if version != expected_version or isinstance(version, bool):
        raise SignerError(
            SignerCode.BUNDLE_VERSION_UNSUPPORTED,
            f"{what} version was {version!r}; this signer understands version {expected_version} only",
        )
