"""BIP84 native-SegWit keys with bitcoinlib: the account xpub, P2WPKH addresses, private keys.

bitcoinlib writes a config, a log and a database into its data directory on
import; ``BCL_DATA_DIR`` points it at ours (``STRONGROOM_DATA_DIR``/bitcoinlib,
else the system temp dir) so it never touches the user's home. It is imported
lazily, so processes that never touch Bitcoin never load it.

Paths: ``m/84'/coin'/0'`` is the hardened account (stored as an xpub only);
receive addresses are ``/0/i``, change addresses ``/1/i``. Every derived
address is re-derived with embit and compared, so a library bug cannot hand
out an address we could not sign for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from embit import bip32  # type: ignore[import-untyped, unused-ignore]
from embit.ec import PrivateKey  # type: ignore[import-untyped, unused-ignore]
from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]
from embit.script import p2wpkh  # type: ignore[import-untyped, unused-ignore]

PURPOSE_BIP84 = 84
MAX_ADDRESS_INDEX = 2**31 - 1
_COIN_TYPES = {"bitcoin": 0, "testnet": 1, "regtest": 1}
_EMBIT_NAMES = {"bitcoin": "main", "testnet": "test", "regtest": "regtest"}
_bitcoinlib: ModuleType | None = None


def _keys_module() -> ModuleType:
    """Import bitcoinlib.keys once, with its data directory pointed at ours."""
    global _bitcoinlib
    if _bitcoinlib is None:
        if "BCL_DATA_DIR" not in os.environ:
            base = os.environ.get("STRONGROOM_DATA_DIR") or tempfile.gettempdir()
            target = Path(base) / "bitcoinlib"
            target.mkdir(parents=True, exist_ok=True)
            os.environ["BCL_DATA_DIR"] = str(target)
        import bitcoinlib.keys as keys_module  # type: ignore[import-untyped, unused-ignore]

        _bitcoinlib = keys_module
    return _bitcoinlib


def bitcoinlib_address(address: str) -> str | None:
    """Return None if bitcoinlib decodes ``address`` (checksum and encoding), else its complaint."""
    keys_module = _keys_module()
    try:
        keys_module.Address.parse(address)
    except Exception as exc:  # bitcoinlib raises EncodingError, BKeyError and others.
        return str(exc) or type(exc).__name__
    return None


def account_path(bitcoinlib_network: str) -> str:
    """Return the BIP84 account path for the network (``m/84'/0'/0'`` or ``m/84'/1'/0'``)."""
    return f"m/{PURPOSE_BIP84}'/{_COIN_TYPES[bitcoinlib_network]}'/0'"


def account_xpub(seed: bytes, bitcoinlib_network: str) -> str:
    """Return the account xpub (bitcoinlib encoding for the network) of ``seed``."""
    keys_module = _keys_module()
    root = keys_module.HDKey.from_seed(seed, network=bitcoinlib_network, witness_type="segwit")
    account = root
    for level in (PURPOSE_BIP84, _COIN_TYPES[bitcoinlib_network], 0):
        account = account.child_private(level, hardened=True)
    xpub: str = account.wif_public()
    return xpub


def address_from_xpub(xpub: str, change: int, index: int, bitcoinlib_network: str) -> str:
    """Return the P2WPKH address at ``xpub/change/index``, cross-checked with embit."""
    if not 0 <= index <= MAX_ADDRESS_INDEX or change not in (0, 1):
        raise ValueError(f"change/index were {change}/{index}, must be 0|1 / 0..{MAX_ADDRESS_INDEX}")
    keys_module = _keys_module()
    child = keys_module.HDKey(xpub, network=bitcoinlib_network).child_public(change).child_public(index)
    address: str = child.address()
    check = p2wpkh(_embit_pubkey(child.public_byte)).address(NETWORKS[_EMBIT_NAMES[bitcoinlib_network]])
    assert address == check, f"bitcoinlib and embit disagree at {change}/{index}: {address} != {check}"
    return address


def private_key(seed: bytes, path: str) -> Any:
    """Return the embit private key at ``path`` of ``seed`` (callers must not keep it)."""
    key: PrivateKey = bip32.HDKey.from_seed(seed).derive(path).key
    return key


def _embit_pubkey(sec: bytes) -> Any:
    from embit.ec import PublicKey  # type: ignore[import-untyped, unused-ignore]

    return PublicKey.parse(sec)
