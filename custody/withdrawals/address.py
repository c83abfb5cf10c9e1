"""Canonical destination text, fixed when a destination enters the platform.

Approvals bind the exact address text and the offline signer compares it with the
transaction's own (EIP-55) form, so an Ethereum address accepted in lower case would
be approved and then refused at bundle export, leaving its hold live for ever. Every
EVM destination is therefore stored, screened, whitelisted and approved in its EIP-55
checksum form; a mixed-case address with a wrong checksum is refused as a likely typo.
"""

from __future__ import annotations

import re
from typing import Final

from eth_utils.address import is_checksum_address, to_checksum_address

from custody.withdrawals.codes import WithdrawalCode, WithdrawalError

EVM_ASSETS: Final = frozenset({"ETH", "USDC"})
_EVM_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")


def canonical_destination(asset: str, address: str) -> str:
    """Return the form approvals bind for ``address`` of ``asset`` (EIP-55 for EVM assets)."""
    if asset not in EVM_ASSETS or not _EVM_ADDRESS.fullmatch(address):
        return address
    body = address[2:]
    if body not in (body.lower(), body.upper()) and not is_checksum_address(address):
        raise WithdrawalError(
            WithdrawalCode.ADDRESS_INVALID,
            f"address {address} has a bad EIP-55 checksum (a typo?); send it all lower case or checksummed",
        )
    checksum: str = to_checksum_address(address)
    return checksum
