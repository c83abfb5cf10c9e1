"""BIP32 hierarchical keys with BIP44 paths (via embit), and Ethereum addresses from them.

Ethereum uses ``m/44'/60'/0'/0/i``: the account-level key ``m/44'/60'/0'`` is
hardened and stored only as an xpub, so deposit addresses are derived without
the seed; signing derives the private key from the seed inside the signer.
Bitcoin will use the same module with coin type 0 and its own address encoding.
"""

from __future__ import annotations

import secrets

from embit import bip32
from eth_keys.datatypes import PublicKey

SEED_BYTES = 32
ETHEREUM_COIN_TYPE = 60
# Non-hardened indexes stop at 2**31; a wallet never hands out that many addresses.
MAX_ADDRESS_INDEX = 2**31 - 1


def generate_seed() -> bytes:
    """Return a fresh 256-bit seed from the OS CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


def account_path(coin_type: int, account: int = 0) -> str:
    """Return the BIP44 account path ``m/44'/coin'/account'``."""
    return f"m/44'/{coin_type}'/{account}'"


def address_path(account: str, index: int, change: int = 0) -> str:
    """Return the full BIP44 path of address ``index`` under ``account``."""
    _check_index(index)
    return f"{account}/{change}/{index}"


def account_xpub(seed: bytes, path: str) -> str:
    """Return the xpub of the hardened account key at ``path``."""
    return str(bip32.HDKey.from_seed(seed).derive(path).to_public().to_base58())


def ethereum_address_from_xpub(xpub: str, index: int, change: int = 0) -> str:
    """Return the EIP-55 address of ``xpub/change/index`` (no private key involved)."""
    _check_index(index)
    child = bip32.HDKey.from_base58(xpub).derive([change, index])
    return str(PublicKey.from_compressed_bytes(child.key.sec()).to_checksum_address())


def ethereum_private_key(seed: bytes, path: str) -> bytes:
    """Return the 32-byte secp256k1 private key at ``path`` (callers must not keep it)."""
    secret: bytes = bip32.HDKey.from_seed(seed).derive(path).key.secret
    assert len(secret) == 32
    return secret


def _check_index(index: int) -> None:
    if not 0 <= index <= MAX_ADDRESS_INDEX:
        raise ValueError(f"address index was {index}, must be 0..{MAX_ADDRESS_INDEX}")
