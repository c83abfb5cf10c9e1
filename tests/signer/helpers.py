"""A complete signer world for tests: seeds, wallets, approvers, platform key, bundles.

Everything is deterministic (fixed entropy, fixed clock) so bundles and
digests are reproducible. `World.btc_bundle()` / `World.eth_bundle()` return
valid, platform-signed, approved bundles; tests tamper with them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from embit import bip32, bip39
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.script import address_to_scriptpubkey
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from custody.bundles.builder import build_bundle, ed25519_signer, platform_sign
from custody.chains.bitcoin.psbt import Utxo, build_psbt
from policies.approval import Approval, SubjectKind, sign_approval
from policies.signature_scheme import ed25519_public_bytes
from signer.anchors import TrustAnchors
from signer.bundle import (
    BitcoinTransaction,
    Bundle,
    BundleBody,
    Chain,
    EthereumTransaction,
    Intent,
    PolicyRef,
    RequestRef,
)
from signer.ethereum import encode_erc20_transfer, ethereum_address
from signer.keystore import restore_keystore
from signer.signing_log import History

NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
PASSPHRASE = "correct horse battery staple"
TEST_SCRYPT_LOG2_N = 10
BIP48_PATH = "m/48h/1h/0h/2h"
ETH_PATH = "m/44'/60'/0'/0/0"
ANVIL_CHAIN_ID = 31337
USDC_CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# Destinations: a regtest P2WPKH address and an Ethereum address that belong to nobody here.
BTC_DESTINATION = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
BTC_ATTACKER = "bcrt1q50rtrmj2f8vl9tem8qpfw36ylw5jg9j2dkku3w"
ETH_DESTINATION = "0x8ba1f109551bD432803012645Ac136ddd64DBA72"
ETH_ATTACKER = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"
def funding_tx(descriptor: str, branch: int, index: int, amount_sat: int, vout: int, salt: int) -> bytes:
    """Return a transaction whose output `vout` pays `amount_sat` to our descriptor at branch/index.

    Its other outputs pay strangers; `salt` makes each funding transaction (and its txid) distinct.
    """
    script = Descriptor.from_string(descriptor).derive(index, branch_index=branch).script_pubkey()
    filler = address_to_scriptpubkey(BTC_DESTINATION)
    outputs = [TransactionOutput(10_000 + n, filler) for n in range(vout)]
    outputs.append(TransactionOutput(amount_sat, script))
    tx = Transaction(vin=[TransactionInput(bytes([salt]) * 32, salt)], vout=outputs)
    return bytes(tx.serialize())


def txid_of(raw: bytes) -> str:
    return str(Transaction.parse(raw).txid().hex())


def mnemonic(n: int) -> str:
    return str(bip39.mnemonic_from_bytes(bytes([n + 1]) * 32))


def seed(n: int) -> bytes:
    return bytes(bip39.mnemonic_to_seed(mnemonic(n)))


def cosigner_key(n: int, network: str = "regtest") -> str:
    root = bip32.HDKey.from_seed(seed(n), version=NETWORKS[network]["xprv"])
    xpub = root.derive(BIP48_PATH).to_public().to_string(version=NETWORKS[network]["xpub"])
    return f"[{root.my_fingerprint.hex()}{BIP48_PATH[1:]}]{xpub}/<0;1>/*"


def descriptor_text(seeds: Sequence[int]) -> str:
    return f"wsh(sortedmulti(2,{','.join(cosigner_key(n) for n in seeds)}))"


def approver_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(name.encode().ljust(32, b"."))


@dataclass
class World:
    """The signer's anchors plus the platform's keys, for building bundles."""

    wallet_seeds: tuple[int, ...] = (0, 1, 2)
    approvers: tuple[str, ...] = ("bob", "carol", "erin")
    initiator: str = "dave"
    platform_key: Ed25519PrivateKey = field(default_factory=lambda: approver_key("platform"))
    descriptor: str = ""

    def __post_init__(self) -> None:
        self.descriptor = descriptor_text(self.wallet_seeds)
        self.eth_address = ethereum_address(seed(0), ETH_PATH)

    # -- trust anchors -------------------------------------------------------------------
    def anchors_json(self) -> dict[str, object]:
        return {
            "format": "strongroom-signer-anchors",
            "version": 1,
            "platform_keys": [
                {"key_id": "platform-1", "public_key": ed25519_public_bytes(self.platform_key).hex()}
            ],
            "approvers": [
                {
                    "approver_id": name,
                    "groups": ["treasury"],
                    "keys": [
                        {
                            "key_id": f"{name}-key",
                            "scheme": "ed25519",
                            "public_key": ed25519_public_bytes(approver_key(name)).hex(),
                        }
                    ],
                }
                for name in (*self.approvers, self.initiator)
            ],
            "quorums": [{"policy_id": "default", "rule": "cold-transfer", "count": 2, "group": "treasury"}],
            "max_approval_age_ms": 72 * HOUR_MS,
            "wallets": [
                {
                    "name": "btc-cold",
                    "chain": "bitcoin",
                    "network": "regtest",
                    "descriptor": self.descriptor,
                    "change_index_max": 10_000,
                    "min_approvals": 2,
                },
                {
                    "name": "eth-cold",
                    "chain": "ethereum",
                    "network": "anvil",
                    "chain_id": ANVIL_CHAIN_ID,
                    "address": self.eth_address,
                    "derivation_path": ETH_PATH,
                    "min_approvals": 2,
                },
            ],
            "assets": [
                {
                    "asset": "BTC",
                    "chain": "bitcoin",
                    "max_amount_minor": 10 * 10**8,
                    "max_fee_minor": 100_000,
                    "warn_fee_minor": 20_000,
                },
                {
                    "asset": "ETH",
                    "chain": "ethereum",
                    "max_amount_minor": str(10**21),
                    "max_fee_minor": 10**17,
                    "warn_fee_minor": 5 * 10**16,
                },
                {
                    "asset": "USDC",
                    "chain": "ethereum",
                    "contract": USDC_CONTRACT,
                    "max_amount_minor": 10**12,
                    "max_fee_minor": 10**17,
                    "warn_fee_minor": 5 * 10**16,
                },
            ],
        }

    def anchors(self) -> TrustAnchors:
        return TrustAnchors.from_bytes(json.dumps(self.anchors_json(), indent=2).encode())

    def write_home(self, home: Path, signer_seed: int = 0) -> Path:
        """Write anchors.json and a keystore restored from seed `signer_seed` into `home`."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "anchors.json").write_text(json.dumps(self.anchors_json(), indent=2))
        restore_keystore(
            home / "keystore.json", PASSPHRASE, mnemonic(signer_seed), scrypt_log2_n=TEST_SCRYPT_LOG2_N
        )
        (home / "passphrase.txt").write_text(PASSPHRASE + "\n")
        return home

    # -- bundles -------------------------------------------------------------------------
    def btc_psbt(
        self,
        *,
        destination: str = BTC_DESTINATION,
        amount_sat: int = 40_000,
        fee_sat: int = 1_000,
        descriptor: str | None = None,
        change_index: int = 9,
    ) -> str:
        return build_psbt(
            descriptor or self.descriptor,
            "regtest",
            self.utxos(descriptor),
            destination,
            amount_sat,
            fee_sat,
            change_index,
        )

    def utxos(self, descriptor: str | None = None) -> list[Utxo]:
        """The two coins every test PSBT spends: 60,000 sat at 0/3 and 50,000 sat at 1/5."""
        text = descriptor or self.descriptor
        first, second = funding_tx(text, 0, 3, 60_000, 0, 1), funding_tx(text, 1, 5, 50_000, 1, 2)
        return [
            Utxo(txid_of(first), 0, 60_000, 0, 3, first),
            Utxo(txid_of(second), 1, 50_000, 1, 5, second),
        ]

    def btc_body(self, psbt: str | None = None, **intent: object) -> BundleBody:
        values: dict[str, object] = {
            "source_wallet": "btc-cold",
            "asset": "BTC",
            "destination": BTC_DESTINATION,
            "amount_minor": 40_000,
            "fee_cap_minor": 5_000,
        }
        values.update(intent)
        return self._body(
            "bnd-wd-1",
            Chain.BITCOIN,
            "regtest",
            "wd-1",
            Intent(**values),  # type: ignore[arg-type]
            BitcoinTransaction(psbt or self.btc_psbt()),
        )

    def eth_tx(self, **fields: object) -> EthereumTransaction:
        values: dict[str, object] = {
            "chain_id": ANVIL_CHAIN_ID,
            "nonce": 0,
            "sender": self.eth_address,
            "to": ETH_DESTINATION,
            "value_wei": 5 * 10**18,
            "data": b"",
            "gas_limit": 21_000,
            "max_fee_per_gas_wei": 2 * 10**9,
            "max_priority_fee_per_gas_wei": 10**9,
        }
        values.update(fields)
        return EthereumTransaction(**values)  # type: ignore[arg-type]

    def eth_body(self, tx: EthereumTransaction | None = None, **intent: object) -> BundleBody:
        values: dict[str, object] = {
            "source_wallet": "eth-cold",
            "asset": "ETH",
            "destination": ETH_DESTINATION,
            "amount_minor": 5 * 10**18,
            "fee_cap_minor": 21_000 * 2 * 10**9,
        }
        values.update(intent)
        return self._body(
            "bnd-wd-2",
            Chain.ETHEREUM,
            "anvil",
            "wd-2",
            Intent(**values),  # type: ignore[arg-type]
            tx or self.eth_tx(),
        )

    def usdc_body(self, amount: int = 2_500_000, calldata: bytes | None = None) -> BundleBody:
        tx = self.eth_tx(
            to=USDC_CONTRACT,
            value_wei=0,
            data=calldata if calldata is not None else encode_erc20_transfer(ETH_DESTINATION, amount),
            gas_limit=60_000,
        )
        return self.eth_body(tx, asset="USDC", amount_minor=amount, fee_cap_minor=60_000 * 2 * 10**9)

    def _body(
        self, bundle_id: str, chain: Chain, network: str, request_id: str, intent: Intent, tx: object
    ) -> BundleBody:
        body = build_bundle(
            bundle_id=bundle_id,
            chain=chain,
            network=network,
            request=RequestRef(SubjectKind.WITHDRAWAL, request_id, self.initiator),
            policy=PolicyRef("default", 3, "cold-transfer"),
            intent=intent,
            transaction=tx,  # type: ignore[arg-type]
            approvals=[],
            created_at_ms=NOW_MS - 60_000,
            expires_at_ms=NOW_MS + HOUR_MS,
        )
        return self.approve(body, ("bob", "carol"))

    def approve(self, body: BundleBody, names: Sequence[str]) -> BundleBody:
        """Return `body` carrying fresh approvals by `names` over its own subject."""
        return dataclasses.replace(body, approvals=tuple(self.approval(body, name) for name in names))

    def approval(self, body: BundleBody, name: str) -> Approval:
        return sign_approval(
            approver_key(name),
            approver_id=name,
            key_id=f"{name}-key",
            subject=body.subject(),
            signed_at_ms=NOW_MS - 30_000,
            expires_at_ms=NOW_MS + 2 * HOUR_MS,
        )

    def sign(self, body: BundleBody) -> Bundle:
        return platform_sign(body, "platform-1", ed25519_signer(self.platform_key))

    def btc_bundle(self) -> Bundle:
        return self.sign(self.btc_body())

    def eth_bundle(self) -> Bundle:
        return self.sign(self.eth_body())


def other_descriptor() -> str:
    """A 2-of-3 wallet of three strangers (seeds 7, 8, 9): outputs to it are not ours."""
    return descriptor_text((7, 8, 9))


def descriptor_of(text: str) -> Descriptor:
    return Descriptor.from_string(text)


EMPTY_HISTORY = History()
