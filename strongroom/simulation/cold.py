"""Cold withdrawals through the offline signer: export a bundle, sign it on the "air-gapped" side
with the signer's own verification and signing log, import the answer, broadcast and settle.

Ethereum's cold wallet is one signer's address; Bitcoin's is a 2-of-3 P2WSH multisig of three
cosigners (each its own machine with its own seed and signing log): a Bitcoin bundle is
broadcast once two distinct cosigners' PSBT signatures have been imported.

The signer machine is part of the world's durable state (its seed, anchors and signing log
survive a platform crash); the platform side (``ColdTransfers``) is rebuilt on restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embit import bip32, bip39  # type: ignore[import-untyped, unused-ignore]
from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]

from custody.bundles.bitcoin import BitcoinBundles
from custody.bundles.chains import BundleChains
from custody.bundles.ethereum import DEFAULT_COLD_PATH, EthereumBundles
from custody.bundles.service import ColdTransfers
from custody.bundles.terms import install_terms
from custody.refusal import CustodyRefusal
from custody.wallets.treasury import REFILL_POLICY_ID, REFILL_RULE
from custody.withdrawals.service import Withdrawals
from policies.signature_scheme import ed25519_public_bytes
from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.canonical import sha256_hex
from signer.ethereum import ethereum_address
from signer.signing import sign_bundle
from signer.signing_log import EVENT_SIGNED, SigningLog
from strongroom.runtimes.bitcoin import BitcoinRuntime
from strongroom.runtimes.ethereum import WalletRuntime
from strongroom.simulation.client import Person

NETWORK = "embedded"
COLD_RULE = "cold-source-approvals"
MAX_AMOUNT_MINOR = {"ETH": 10**24, "USDC": 10**15, "BTC": 21 * 10**14}
BIP48_PATH = "m/48h/1h/0h/2h"  # multisig P2WSH account path (testnet/regtest coin type)


def signer_seed(entropy: bytes) -> bytes:
    """Return the BIP39 seed of the signer's mnemonic made from ``entropy`` (32 bytes)."""
    return bytes(bip39.mnemonic_to_seed(bip39.mnemonic_from_bytes(entropy)))


def cold_address(seed: bytes) -> str:
    """Return the cold wallet's address: the signer's Ethereum key at the default cold path."""
    return str(ethereum_address(seed, DEFAULT_COLD_PATH))


def cold_descriptor(seeds: list[bytes]) -> str:
    """Return the Bitcoin cold wallet's ``wsh(sortedmulti(2,...))`` descriptor over the cosigners' seeds."""
    keys = []
    for seed in seeds:
        root = bip32.HDKey.from_seed(seed, version=NETWORKS["regtest"]["xprv"])
        xpub = root.derive(BIP48_PATH).to_public().to_string(version=NETWORKS["regtest"]["xpub"])
        keys.append(f"[{root.my_fingerprint.hex()}{BIP48_PATH[1:]}]{xpub}/<0;1>/*")
    return f"wsh(sortedmulti(2,{','.join(keys)}))"


def cold_transfers(sessions: Any, runtime: WalletRuntime, btc_runtime: BitcoinRuntime, keystore: Any,
                   withdrawals: Withdrawals, clock: Any, confirmations: int,
                   btc_confirmations: int) -> ColdTransfers:
    """Wire the platform's cold-transfer service for both embedded chains (as the server does)."""
    chains = BundleChains([EthereumBundles(runtime.adapter, dict.fromkeys(runtime.adapter.assets(),
                                                                        confirmations), NETWORK),
                           BitcoinBundles(btc_runtime.cold, {"BTC": btc_confirmations})])
    install_terms(chains, withdrawals, [runtime.treasury, btc_runtime.treasury])
    # The Bitcoin registry knows both chains' address schemes.
    return ColdTransfers(sessions, btc_runtime.wallets, keystore, chains, clock)


def anchors(cold: ColdTransfers, treasury: list[Person], runtime: WalletRuntime) -> TrustAnchors:
    """Build the signer's trust anchors from the platform's key, wallets and fee caps."""
    platform = cold.anchors()
    fee_caps = {str(c["asset"]): int(str(c["fee_cap_minor"])) for c in platform["fee_caps"]}  # type: ignore[attr-defined]
    document = {
        "format": "strongroom-signer-anchors", "version": 1,
        "platform_keys": platform["platform_keys"],
        "approvers": [{"approver_id": p.username, "groups": ["treasury"],
                       "keys": [{"key_id": p.approver_key_id, "scheme": "ed25519",
                                 "public_key": ed25519_public_bytes(p.approver_key).hex()}]}
                      for p in treasury if p.approver_key is not None],
        "quorums": [{"policy_id": "default", "rule": COLD_RULE, "count": 2, "group": "treasury"},
                    {"policy_id": REFILL_POLICY_ID, "rule": REFILL_RULE, "count": 2, "group": "treasury"}],
        "wallets": platform["wallets"],
        "assets": [{"asset": asset, "chain": "bitcoin" if asset == "BTC" else "ethereum",
                    "max_amount_minor": str(MAX_AMOUNT_MINOR[asset]), "max_fee_minor": str(cap),
                    **({"contract": runtime.adapter.token_address(asset)} if asset == "USDC" else {})}
                   for asset, cap in sorted(fee_caps.items())],
    }
    return TrustAnchors.from_bytes(json.dumps(document).encode())


class SignerMachine:
    """The offline signer: its seed, anchors and hash-chained signing log (durable)."""

    def __init__(self, seed: bytes, home: Path) -> None:
        self.seed = seed
        home.mkdir(parents=True, exist_ok=True)
        self.log = SigningLog(home / "signing.log")
        self.anchors: TrustAnchors | None = None

    def sign(self, data: bytes, now_ms: int) -> tuple[bytes | None, str]:
        """Verify and sign a bundle as ``strongroom-signer sign`` does; log before answering."""
        assert self.anchors is not None, "signer has no anchors"
        bundle = Bundle.from_bytes(data)
        outcome = sign_bundle(bundle, self.anchors, self.seed, now_ms, self.log.history())
        if outcome.signed is None:
            refusals = [str(r) for r in outcome.verification.refusals]
            return None, "refused " + "; ".join(refusals)[:120]
        output = outcome.signed.to_bytes()
        body = bundle.body
        self.log.append(EVENT_SIGNED, now_ms, {
            "bundle_id": body.bundle_id, "bundle_sha256": bundle.digest, "request": body.request.key,
            "chain": body.chain.value, "network": body.network, "signer_id": outcome.signed.signer_id,
            "output_sha256": sha256_hex(output),
            "summary": f"{body.intent.amount_minor} {body.intent.asset} to {body.intent.destination}"})
        return output, "signed"


def export(cold: ColdTransfers, withdrawal_id: str) -> tuple[bytes | None, str]:
    """Export the bundle of an approved cold withdrawal (a refusal is an outcome)."""
    try:
        exported = cold.export("withdrawal", withdrawal_id)
    except CustodyRefusal as exc:
        return None, f"refused {exc.code.name.lower()}"
    return exported.data, f"exported {exported.view.state}"


def import_signed(cold: ColdTransfers, data: bytes) -> str:
    """Import a signed answer (broadcasts it); a refusal is an outcome."""
    try:
        view = cold.import_signed(data)
    except CustodyRefusal as exc:
        return f"refused {exc.code.name.lower()}"
    return f"imported {view.state}"
