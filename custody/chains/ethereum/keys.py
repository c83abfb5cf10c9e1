"""Ethereum keys: BIP44 coin type 60 accounts, EIP-55 addresses from an xpub, and hot-key signing.

Ethereum uses ``m/44'/60'/0'/0/i``: the account-level key ``m/44'/60'/0'`` is
hardened and stored only as an xpub, so deposit addresses are derived without
the seed; signing opens the sealed seed through the wallet registry, derives
the one private key it needs, signs with eth-account and drops every
reference before returning. Python cannot zero immutable ``bytes``, so the
guarantee is "never persisted, logged or returned", not "erased from RAM".
The keystore's ``sign_digest`` is not used because it returns no recovery id.
"""

from __future__ import annotations

from typing import Any

from embit import bip32
from eth_account import Account
from eth_keys.datatypes import PublicKey
from sqlalchemy.orm import Session
from web3 import Web3

from custody.wallets import hd
from custody.wallets.wallet import SignedTransaction, WalletRegistry

CHAIN = "ethereum"
ETHEREUM_COIN_TYPE = 60


class EthereumScheme:
    """BIP44 coin type 60, EIP-55 addresses."""

    def account_path(self) -> str:
        return hd.account_path(ETHEREUM_COIN_TYPE)

    def account_xpub(self, seed: bytes) -> str:
        return hd.account_xpub(seed, self.account_path())

    def address(self, xpub: str, change: int, index: int) -> str:
        return ethereum_address_from_xpub(xpub, index, change)


def ethereum_address_from_xpub(xpub: str, index: int, change: int = 0) -> str:
    """Return the EIP-55 address of ``xpub/change/index`` (no private key involved)."""
    hd.check_index(index)
    child = bip32.HDKey.from_base58(xpub).derive([change, index])
    return str(PublicKey.from_compressed_bytes(child.key.sec()).to_checksum_address())


def ethereum_private_key(seed: bytes, path: str) -> bytes:
    """Return the 32-byte secp256k1 private key at ``path`` (callers must not keep it)."""
    secret: bytes = bip32.HDKey.from_seed(seed).derive(path).key.secret
    assert len(secret) == 32
    return secret


def sign_transaction(
    wallets: WalletRegistry, wallet_id: int, path: str, tx: dict[str, Any], session: Session | None = None
) -> SignedTransaction:
    """Sign an Ethereum transaction with the key at ``path`` of a seeded wallet.

    Pass the caller's ``session`` when signing inside its transaction (SQLite
    allows one writer, and every session begins as a writer).
    """

    def sign(seed: bytes) -> bytes:
        key = ethereum_private_key(seed, path)
        try:
            return bytes(Account.sign_transaction(tx, key).raw_transaction)
        finally:
            # Drop the reference to the secret before anything can log or raise.
            key = b""

    raw = wallets.use_seed(wallet_id, sign, session)
    return SignedTransaction(raw, Web3.to_hex(Web3.keccak(raw)))
