"""Trust anchors: what the signer machine itself believes, never taken from a bundle.

A JSON file written by the treasury team when the signer is set up (and
changed only by hand, on the signer): the platform's public keys, the
approvers with their keys and groups, the quorum each policy rule requires,
the wallets that count as ours (Bitcoin descriptors, Ethereum addresses with
their derivation path), and per-asset sanity limits. docs/signer.md shows
an example.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embit.descriptor import Descriptor  # type: ignore[import-untyped, unused-ignore]
from eth_utils.address import is_checksum_address

from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.quorum import DEFAULT_MAX_APPROVAL_AGE_MS, QuorumRequirement
from policies.results import PolicyError
from policies.signature_scheme import SignatureScheme
from signer.bundle import BITCOIN_NETWORKS, Chain
from signer.canonical import parse_strict
from signer.fields import Fields
from signer.results import SignerCode, SignerError

ANCHORS_FORMAT = "strongroom-signer-anchors"
ANCHORS_VERSION = 1
MAX_ANCHOR_ITEMS = 1000
ETHEREUM_PATH_PREFIX = "m/44'/60'/"
# Change may only go to the descriptor's change branch (1) at an index up to this, unless a wallet
# names its own `change_index_max`: an index like 2147483647 is ours but no wallet ever scans it.
DEFAULT_CHANGE_INDEX_MAX = 10_000
MAX_CHANGE_INDEX = 2**31 - 1
# The fewest approvals any bundle from a wallet needs, whatever rule the bundle claims.
DEFAULT_MIN_APPROVALS = 2

_INVALID = SignerCode.ANCHORS_INVALID


@dataclass(frozen=True, slots=True)
class BitcoinWallet:
    """A 2-of-3 (or M-of-N) P2WSH sortedmulti wallet, as a descriptor with key origins and <0;1>/*."""

    name: str
    network: str
    descriptor_text: str
    descriptor: Any  # embit Descriptor; parsed once when the anchors are loaded.
    chain: Chain = Chain.BITCOIN
    change_index_max: int = DEFAULT_CHANGE_INDEX_MAX
    min_approvals: int = DEFAULT_MIN_APPROVALS


@dataclass(frozen=True, slots=True)
class EthereumWallet:
    """An Ethereum account of ours: its address, chain id and the seed path of its key."""

    name: str
    network: str
    chain_id: int
    address: str
    derivation_path: str
    chain: Chain = Chain.ETHEREUM
    min_approvals: int = DEFAULT_MIN_APPROVALS


Wallet = BitcoinWallet | EthereumWallet


@dataclass(frozen=True, slots=True)
class AssetLimits:
    """Per-asset limits; `contract` is the ERC-20 token address (None for native assets).

    `max_fee_minor` is an absolute ceiling on the fee cap (and so the fee) of
    any bundle; above `warn_fee_minor` (default half the ceiling) the
    operator sees a warning and must accept it explicitly. `symbol` and
    `decimals` let the operator read amounts in whole units.
    """

    asset: str
    chain: Chain
    max_amount_minor: int
    max_fee_minor: int
    contract: str | None = None
    warn_fee_minor: int = 0
    decimals: int = 0


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """Everything the signer trusts, indexed for verification."""

    platform_keys: Mapping[str, bytes]
    registry: ApproverRegistry
    quorums: Mapping[tuple[str, str], QuorumRequirement]
    max_approval_age_ms: int
    wallets: Mapping[str, Wallet]
    assets: Mapping[str, AssetLimits]

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustAnchors:
        """Parse an anchors file; raise `SignerError` (7020) naming what is wrong."""
        try:
            document = parse_strict(data, "trust anchors", big_ints=True)
        except SignerError as exc:
            raise SignerError(_INVALID, exc.refusal.message) from exc
        try:
            return _parse(Fields(document, "anchors", _INVALID))
        except PolicyError as exc:
            raise SignerError(_INVALID, exc.message, exc.code) from exc


def _parse(f: Fields) -> TrustAnchors:
    if f.raw("format") != ANCHORS_FORMAT or f.raw("version") != ANCHORS_VERSION:
        raise f.error(f"anchors must have format {ANCHORS_FORMAT!r} and version {ANCHORS_VERSION}")
    platform_keys: dict[str, bytes] = {}
    for item in f.array("platform_keys", MAX_ANCHOR_ITEMS):
        key = Fields(item, "anchors.platform_keys[]", _INVALID)
        platform_keys[key.text("key_id")] = key.hex_bytes("public_key", 32)
        key.finish()
    anchors = TrustAnchors(
        platform_keys=platform_keys,
        registry=_registry(f.array("approvers", MAX_ANCHOR_ITEMS)),
        quorums=_quorums(f.array("quorums", MAX_ANCHOR_ITEMS)),
        max_approval_age_ms=(
            f.integer("max_approval_age_ms", 1)
            if f.has("max_approval_age_ms")
            else DEFAULT_MAX_APPROVAL_AGE_MS
        ),
        wallets=_wallets(f.array("wallets", MAX_ANCHOR_ITEMS)),
        assets=_assets(f.array("assets", MAX_ANCHOR_ITEMS)),
    )
    f.finish()
    if not anchors.platform_keys:
        raise f.error("anchors.platform_keys must name at least one platform key")
    return anchors


def _registry(items: list[Any]) -> ApproverRegistry:
    approvers: list[Approver] = []
    keys: list[ApproverKey] = []
    for item in items:
        f = Fields(item, "anchors.approvers[]", _INVALID)
        approver_id = f.text("approver_id")
        groups = frozenset(Fields({"g": g}, "group", _INVALID).text("g") for g in f.array("groups", 64))
        approvers.append(Approver(approver_id, groups))
        for key_item in f.array("keys", 16):
            k = Fields(key_item, f"anchors.approvers[{approver_id}].keys[]", _INVALID)
            scheme = SignatureScheme(k.choice("scheme", tuple(s.value for s in SignatureScheme)))
            keys.append(ApproverKey(k.text("key_id"), approver_id, scheme, k.hex_bytes("public_key", 32)))
            k.finish()
        f.finish()
    return ApproverRegistry.build(approvers, keys)


def _quorums(items: list[Any]) -> dict[tuple[str, str], QuorumRequirement]:
    quorums: dict[tuple[str, str], QuorumRequirement] = {}
    for item in items:
        f = Fields(item, "anchors.quorums[]", _INVALID)
        key = (f.text("policy_id"), f.text("rule"))
        if key in quorums:
            raise f.error(f"quorum for policy {key[0]} rule {key[1]} is listed twice")
        quorums[key] = QuorumRequirement(f.integer("count", 1, 16), f.text("group"))
        f.finish()
    return quorums


def _wallet(item: object) -> Wallet:
    f = Fields(item, "anchors.wallets[]", _INVALID)
    chain = Chain(f.choice("chain", tuple(c.value for c in Chain)))
    name, network = f.text("name"), f.text("network")
    wallet: Wallet
    if chain is Chain.BITCOIN:
        if network not in BITCOIN_NETWORKS:
            raise f.error(f"wallet {name} network was {network!r}, must be one of {BITCOIN_NETWORKS}")
        text = f.string("descriptor", 4096)
        change_max = (
            f.integer("change_index_max", 0, MAX_CHANGE_INDEX)
            if f.has("change_index_max")
            else DEFAULT_CHANGE_INDEX_MAX
        )
        wallet = BitcoinWallet(
            name,
            network,
            text,
            parse_descriptor(text, name),
            change_index_max=change_max,
            min_approvals=_min_approvals(f),
        )
    else:
        address, path = f.text("address"), f.text("derivation_path")
        if not is_checksum_address(address):
            raise f.error(f"wallet {name} address {address!r} must be an EIP-55 address")
        if not path.startswith(ETHEREUM_PATH_PREFIX):
            raise f.error(
                f"wallet {name} derivation_path was {path!r}, must start with {ETHEREUM_PATH_PREFIX}"
            )
        wallet = EthereumWallet(
            name, network, f.integer("chain_id", 1), address, path, min_approvals=_min_approvals(f)
        )
    f.finish()
    return wallet


def _min_approvals(f: Fields) -> int:
    return f.integer("min_approvals", 1, 16) if f.has("min_approvals") else DEFAULT_MIN_APPROVALS


def parse_descriptor(text: str, name: str) -> Any:
    """Parse a wsh(sortedmulti(...)) descriptor whose keys all carry origins and a wildcard."""
    try:
        descriptor = Descriptor.from_string(text)
    except Exception as exc:  # embit raises assorted exception types for bad descriptors.
        raise SignerError(_INVALID, f"wallet {name} descriptor does not parse: {exc}") from exc
    if not (descriptor.is_segwit and descriptor.is_basic_multisig and descriptor.is_sorted) or descriptor.sh:
        raise SignerError(
            _INVALID, f"wallet {name} descriptor must be wsh(sortedmulti(...)), was {text[:40]}..."
        )
    for key in descriptor.keys:
        if key.origin is None or not key.is_extended or not key.is_wildcard:
            raise SignerError(
                _INVALID, f"wallet {name}: every key needs [fingerprint/path] origin and /<0;1>/*"
            )
    return descriptor


# Whole-unit decimals of the assets every deployment has; others name "decimals" in the anchors.
KNOWN_DECIMALS = {"BTC": 8, "ETH": 18, "USDC": 6}
MAX_DECIMALS = 36


def _asset(item: object) -> AssetLimits:
    f = Fields(item, "anchors.assets[]", _INVALID)
    name = f.text("asset")
    max_fee = f.lenient_amount("max_fee_minor")
    asset = AssetLimits(
        asset=name,
        chain=Chain(f.choice("chain", tuple(c.value for c in Chain))),
        max_amount_minor=f.lenient_amount("max_amount_minor"),
        max_fee_minor=max_fee,
        contract=f.text("contract") if f.has("contract") else None,
        warn_fee_minor=f.lenient_amount("warn_fee_minor") if f.has("warn_fee_minor") else max_fee // 2,
        decimals=(
            f.integer("decimals", 0, MAX_DECIMALS) if f.has("decimals") else KNOWN_DECIMALS.get(name, 0)
        ),
    )
    f.finish()
    if asset.warn_fee_minor > asset.max_fee_minor:
        raise f.error(
            f"asset {asset.asset} warn_fee_minor {asset.warn_fee_minor} is above max_fee_minor "
            f"{asset.max_fee_minor}; the warning threshold must be lower than the ceiling"
        )
    if asset.contract is not None and (
        asset.chain is not Chain.ETHEREUM or not is_checksum_address(asset.contract)
    ):
        raise f.error(f"asset {asset.asset} contract must be an EIP-55 address on ethereum")
    return asset


def _wallets(items: list[Any]) -> dict[str, Wallet]:
    wallets: dict[str, Wallet] = {}
    for item in items:
        wallet = _wallet(item)
        if wallet.name in wallets:
            raise SignerError(_INVALID, f"wallet {wallet.name} is listed twice")
        wallets[wallet.name] = wallet
    return wallets


def _assets(items: list[Any]) -> dict[str, AssetLimits]:
    assets: dict[str, AssetLimits] = {}
    for item in items:
        asset = _asset(item)
        if asset.asset in assets:
            raise SignerError(_INVALID, f"asset {asset.asset} is listed twice")
        assets[asset.asset] = asset
    return assets
