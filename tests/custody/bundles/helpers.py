"""A cold-transfer world: platform (app, wallets, cold transfers) and the offline signer's side.

The cold wallet's address is the signer's Ethereum key at m/44'/60'/0'/0/0 of
the test mnemonic (tests/signer/helpers.py, seed 0), registered watch-only on
the platform. It is funded the way production funds it: a user deposit,
consolidated into the hot wallet, swept hot -> cold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from custody.bundles.chains import BundleChains
from custody.bundles.ethereum import EthereumBundles
from custody.bundles.service import ColdTransfers
from custody.bundles.terms import install_terms
from custody.chains.ethereum.devchain import DevChain
from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger
from custody.wallets.treasury import REFILL_POLICY_ID, REFILL_RULE
from custody.wallets.wallet import Temperature
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes
from signer.anchors import TrustAnchors
from signer.bundle import Bundle
from signer.ethereum import ethereum_address
from signer.keystore import restore_keystore
from signer.signed import SignedBundle
from signer.signing import sign_bundle
from signer.signing_log import History
from strongroom.runtimes.ethereum import build_runtime

from ...signer.helpers import ETH_DESTINATION, ETH_PATH, PASSPHRASE, TEST_SCRYPT_LOG2_N, mnemonic, seed
from ..access.helpers import SignedClient, make_user, withdrawal_subject
from ..wallets.helpers import CONFIRMATIONS, ETH, Harness

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
COLD_WALLET = "ethereum-cold"
COLD_RULE = "cold-source-approvals"
SIGNER_SEED = 0


def cold_address() -> str:
    return ethereum_address(seed(SIGNER_SEED), ETH_PATH)


def make_cold_harness(chain: DevChain, url: str, keystore: LocalKeystore, clock: Any) -> Harness:
    """Wallets on ``chain`` whose cold wallet is the test signer's address."""
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine), clock=clock)
    runtime = build_runtime(
        make_session_factory(engine),
        ledger,
        keystore,
        chain.adapter(),
        clock,
        CONFIRMATIONS,
        start_height=chain.web3.eth.block_number + 1,
    )
    runtime.setup_wallets(cold_address())
    runtime.watcher.tick()
    return Harness(chain, runtime, ledger, url, keystore, clock)


@dataclass
class ColdWorld:
    """The platform with users and a funded cold wallet, and the signer's trust anchors."""

    app: Flask
    client: FlaskClient
    clock: Any
    keystore: LocalKeystore
    harness: Harness
    network: str
    alice: SignedClient
    treasury: list[SignedClient]

    @property
    def transfers(self) -> ColdTransfers:
        return cold_transfers(self.app, self.harness, self.keystore, self.clock, self.network)

    # -- the signer's side ---------------------------------------------------------------
    def anchors_json(self, platform_key: dict[str, str] | None = None) -> dict[str, object]:
        """The signer's anchors; the platform key is this world's unless given (`strongroom bundle key`)."""
        platform = platform_key or self.transfers.platform_key().to_json()
        chain_id = self.harness.chain.web3.eth.chain_id
        adapter = self.harness.runtime.adapter
        return {
            "format": "strongroom-signer-anchors",
            "version": 1,
            "platform_keys": [platform],
            "approvers": [
                {
                    "approver_id": t.username,
                    "groups": ["treasury"],
                    "keys": [
                        {
                            "key_id": t.approver_key_id,
                            "scheme": "ed25519",
                            "public_key": ed25519_public_bytes(t.approver_key).hex(),
                        }
                    ],
                }  # type: ignore[arg-type]
                for t in self.treasury
            ],
            "quorums": [
                {"policy_id": "default", "rule": COLD_RULE, "count": 2, "group": "treasury"},
                {"policy_id": REFILL_POLICY_ID, "rule": REFILL_RULE, "count": 2, "group": "treasury"},
            ],
            "wallets": [
                {
                    "name": COLD_WALLET,
                    "chain": "ethereum",
                    "network": self.network,
                    "chain_id": chain_id,
                    "address": cold_address(),
                    "derivation_path": ETH_PATH,
                }
            ],
            "assets": [
                {
                    "asset": "ETH",
                    "chain": "ethereum",
                    "max_amount_minor": str(100 * ETH),
                    "max_fee_minor": str(ETH),
                },
                {
                    "asset": "USDC",
                    "chain": "ethereum",
                    "contract": adapter.token_address("USDC"),
                    "max_amount_minor": 10**12,
                    "max_fee_minor": str(ETH),
                },
            ],
        }

    def anchors(self) -> TrustAnchors:
        return TrustAnchors.from_bytes(json.dumps(self.anchors_json()).encode())

    def write_signer_home(self, home: Path, platform_key: dict[str, str] | None = None) -> Path:
        """Set up a signer machine: anchors.json, the restored keystore, a passphrase file."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "anchors.json").write_text(json.dumps(self.anchors_json(platform_key), indent=2))
        restore_keystore(
            home / "keystore.json", PASSPHRASE, mnemonic(SIGNER_SEED), scrypt_log2_n=TEST_SCRYPT_LOG2_N
        )
        (home / "passphrase.txt").write_text(PASSPHRASE + "\n")
        return home

    def sign(self, data: bytes, history: History | None = None) -> bytes:
        """Sign a bundle the way `strongroom-signer sign` does, through its Python API."""
        outcome = sign_bundle(
            Bundle.from_bytes(data),
            self.anchors(),
            seed(SIGNER_SEED),
            self.clock.now_ms,
            history or History(),
        )
        assert outcome.signed is not None, [str(r) for r in outcome.verification.refusals]
        signed: SignedBundle = outcome.signed
        return signed.to_bytes()

    # -- the platform's side -------------------------------------------------------------
    def cold_withdrawal(
        self,
        amount: int,
        destination: str = ETH_DESTINATION,
        asset: str = "ETH",
        approval_ttl_ms: int = HOUR_MS,
    ) -> str:
        """Create a cold withdrawal of alice's and approve it by two treasury members; return its id."""
        created = self.alice.post(
            "/api/v1/withdrawals",
            json={"asset": asset, "amount": str(amount), "destination": destination, "source_wallet": "cold"},
            mfa=True,
            idempotency_key=f"cold-{asset}-{self.alice.clock.now_ms}",
        )
        assert created.status_code == 201, created.json
        withdrawal = created.json["withdrawal"]
        assert (withdrawal["state"], withdrawal["policy"]["rule_id"]) == ("pending_approval", COLD_RULE)
        url = f"/api/v1/withdrawals/{withdrawal['id']}/approvals"
        for approver in self.treasury[:2]:
            answer = approver.post(
                url,
                json={
                    "approval": approver.approve_subject(
                        withdrawal_subject(withdrawal), ttl_ms=approval_ttl_ms
                    )
                },
                mfa=True,
            )
            assert answer.status_code == 200, answer.json
        assert answer.json["withdrawal"]["state"] == "approved"
        return str(withdrawal["id"])

    def withdrawal_state(self, withdrawal_id: str) -> str:
        return str(self.alice.get(f"/api/v1/withdrawals/{withdrawal_id}").json["withdrawal"]["state"])

    def cold_balance(self, asset: str = "ETH") -> int:
        return self.harness.wallet_balance(Temperature.COLD, asset)

    def settle(self, rounds: int = 6) -> None:
        """Mine and tick the wallets and the cold transfers until everything is final."""
        for _ in range(rounds):
            self.harness.runtime.tick()
            self.transfers.tick()
            self.harness.chain.mine(1)
        self.harness.runtime.tick()
        self.transfers.tick()


def cold_transfers(
    app: Flask, harness: Harness, keystore: LocalKeystore, clock: Any, network: str
) -> ColdTransfers:
    chains = BundleChains([EthereumBundles(harness.runtime.adapter, CONFIRMATIONS, network)])
    install_terms(chains, app.extensions["strongroom.access"].withdrawals, [harness.runtime.treasury])
    return ColdTransfers(
        app.extensions["strongroom.sessions"], harness.runtime.wallets, keystore, chains, clock
    )


def make_world(
    app: Flask,
    client: FlaskClient,
    clock: Any,
    keystore: LocalKeystore,
    harness: Harness,
    network: str,
    cold_eth: int = 5 * ETH,
) -> ColdWorld:
    """Users, a whitelisted destination, and about ``cold_eth`` swept from a deposit into cold storage."""
    alice = make_user(app, client, clock, "alice", {Role.TRADER})
    treasury = [
        make_user(app, client, clock, f"treasury{i}", {Role.TREASURY}, approver=True) for i in (1, 2, 3)
    ]
    world = ColdWorld(app, client, clock, keystore, harness, network, alice, treasury)
    _ = world.transfers  # Installs the transfer terms approvers bind (chain, network, wallet, fee cap).
    chain = harness.chain
    chain.send_eth(harness.deposit_address("alice"), cold_eth + 2 * ETH)
    chain.mine(CONFIRMATIONS["ETH"] + 1)
    harness.runtime.watcher.tick()
    harness.settle()
    harness.runtime.treasury.consolidate("ETH")
    harness.settle()
    harness.runtime.treasury.set_limits("ETH", 0, ETH, ETH + 1)
    harness.runtime.treasury.rebalance("ETH")
    harness.settle()
    assert world.cold_balance() >= cold_eth - ETH // 10, world.cold_balance()
    assert (
        alice.post(
            "/api/v1/whitelist", json={"asset": "ETH", "address": ETH_DESTINATION}, mfa=True
        ).status_code
        == 201
    )
    clock.advance(DAY_MS + 1)
    return world
