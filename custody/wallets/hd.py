"""BIP32 hierarchical keys with BIP44 paths (via embit), chain-neutral.

A wallet's hardened account key is stored only as an xpub, so addresses are
derived without the seed. How a chain turns the xpub into addresses is its
``AddressScheme`` (``custody.chains.ethereum.keys.EthereumScheme``, BIP84 in
``custody.chains.bitcoin.keys``).
"""

from __future__ import annotations

import secrets

from embit import bip32

SEED_BYTES = 32
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
    check_index(index)
    return f"{account}/{change}/{index}"


def account_xpub(seed: bytes, path: str) -> str:
    """Return the xpub of the hardened account key at ``path``."""
    return str(bip32.HDKey.from_seed(seed).derive(path).to_public().to_base58())


def check_index(index: int) -> None:
    """Raise ValueError unless ``index`` is a non-hardened address index."""
    if not 0 <= index <= MAX_ADDRESS_INDEX:
        raise ValueError(f"address index was {index}, must be 0..{MAX_ADDRESS_INDEX}")
