"""Address normalisation for screening: one canonical form per address family.

An address is compared in the form its chain treats as the same destination:
EVM addresses (ETH, USDC and every 0x-style chain) are 20 bytes whose EIP-55
mixed case is only a checksum, so they compare lowercase; Bitcoin bech32
addresses (``bc1``/``tb1``/``bcrt1``) are case-insensitive by BIP-173 and
compare lowercase; Bitcoin base58 addresses are case-sensitive and compare as
written. Validation is the withdrawal service's job: screening normalises
whatever it is given, so a malformed address still matches its listed form.
"""

from __future__ import annotations

import re

EVM, BITCOIN = "evm", "bitcoin"
_EVM_ADDRESS = re.compile(r"^0[xX][0-9a-fA-F]{40}$")
_BECH32_PREFIXES = ("bc1", "tb1", "bcrt1")
# The chain family of each custody asset (custody.assets): what a destination of that asset is.
ASSET_FAMILY: dict[str, str] = {"BTC": BITCOIN, "ETH": EVM, "USDC": EVM}
# OFAC's "Digital Currency Address - XXX" codes whose addresses we can hold or send to.
CURRENCY_FAMILY: dict[str, str] = {"XBT": BITCOIN, "BTC": BITCOIN, "ETH": EVM, "USDC": EVM, "USDT": EVM,
                                   "ETC": EVM, "BSC": EVM, "ARB": EVM}


def family_of_currency(currency: str, address: str) -> str:
    """Return the address family of a listed ``currency`` address (its code, lowercased, if foreign).

    A 0x address listed under any code is an EVM address: the same key controls it on every
    EVM chain, so it is screened for ETH and USDC alike.
    """
    if _EVM_ADDRESS.fullmatch(address.strip()):
        return EVM
    return CURRENCY_FAMILY.get(currency.upper(), currency.lower())


def normalise(family: str, address: str) -> str:
    """Return the canonical form of ``address`` in ``family`` (see the module docstring)."""
    value = address.strip()
    if family == EVM:
        return value.lower()
    if family == BITCOIN and value.lower().startswith(_BECH32_PREFIXES):
        return value.lower()
    return value


def normalise_for_asset(asset: str, address: str) -> tuple[str, str]:
    """Return ``(family, canonical address)`` of a destination of ``asset``."""
    family = ASSET_FAMILY.get(asset.upper(), asset.lower())
    return family, normalise(family, address)
