"""Bitcoin networks and address validation (mainnet, testnet, regtest).

Addresses are checked twice: bitcoinlib decodes them (a bad bech32/base58
checksum is refused with a clear message), then embit re-encodes the script
for the wallet's network, which must give back exactly the same string, so a
testnet address is refused on mainnet and a non-canonical (upper-case) one is
normalised to lower case first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]
from embit.script import Script, address_to_scriptpubkey  # type: ignore[import-untyped, unused-ignore]

from custody.chains.adapter import ChainCode, ChainError
from custody.chains.bitcoin.keys import bitcoinlib_address

MAX_ADDRESS_LEN = 90


@dataclass(frozen=True, slots=True)
class Network:
    """One Bitcoin network as the three libraries and BIP44/84 name it."""

    name: str  # ours: mainnet / testnet / regtest
    embit_name: str  # embit and the signer bundle: main / test / regtest
    bitcoinlib_name: str  # bitcoinlib: bitcoin / testnet / regtest
    coin_type: int  # BIP44 coin type: 0 mainnet, 1 every test network
    hrp: str

    @property
    def embit(self) -> dict[str, Any]:
        """Return embit's parameter dict for this network."""
        params: dict[str, Any] = NETWORKS[self.embit_name]
        return params


NETWORKS_BY_NAME = {
    "mainnet": Network("mainnet", "main", "bitcoin", 0, "bc"),
    "testnet": Network("testnet", "test", "testnet", 1, "tb"),
    "regtest": Network("regtest", "regtest", "regtest", 1, "bcrt"),
}


def network(name: str) -> Network:
    """Return the network called ``name`` or raise ValueError."""
    found = NETWORKS_BY_NAME.get(name)
    if found is None:
        raise ValueError(f"bitcoin network was {name!r}, must be one of {', '.join(NETWORKS_BY_NAME)}")
    return found


def normalize_address(address: str, net: Network) -> str:
    """Return the canonical form of ``address`` on ``net`` or raise ``ChainError(INVALID_ADDRESS)``."""
    if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_LEN:
        raise ChainError(ChainCode.INVALID_ADDRESS, f"address was {address!r}, must be 1..90 characters")
    candidate = address.strip()
    # Bech32 may be written all upper-case (QR codes); the canonical form is lower-case.
    if candidate.upper() == candidate and candidate.lower().startswith(net.hrp + "1"):
        candidate = candidate.lower()
    problem = bitcoinlib_address(candidate)
    if problem is not None:
        raise ChainError(
            ChainCode.INVALID_ADDRESS,
            f"address {address!r} is not a valid Bitcoin address (bad checksum or encoding: {problem})",
        )
    script = script_of(candidate)
    if script is None or _encode(script, net) != candidate:
        raise ChainError(
            ChainCode.INVALID_ADDRESS, f"address {address!r} is not an address of the {net.name} network"
        )
    return candidate


def script_of(address: str) -> Any:
    """Return the scriptPubKey of a syntactically valid address, or None."""
    try:
        return address_to_scriptpubkey(address)
    except Exception:  # embit raises assorted errors for invalid addresses.
        return None


def address_of(script: Any, net: Network) -> str | None:
    """Return the address of ``script`` on ``net``, or None for scripts without one."""
    return _encode(script if isinstance(script, Script) else Script(script), net)


def _encode(script: Any, net: Network) -> str | None:
    try:
        return str(script.address(net.embit))
    except Exception:  # non-standard scripts (OP_RETURN, bare multisig) have no address
        return None
