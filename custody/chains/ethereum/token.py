"""The USDC-like ERC-20 token (6 decimals): its compiled artifact and deployment.

The Solidity source and the artifact compiled from it by solcjs live in
``contracts/``; ``tests/custody/chains/test_token_artifact.py`` recompiles
the source and checks that the bytecode is identical.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

ARTIFACT_PATH = Path(__file__).resolve().parents[3] / "contracts" / "StrongroomUSD.json"
TOKEN_DECIMALS = 6
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
# transfer(address,uint256)
TRANSFER_SELECTOR = keccak(text="transfer(address,uint256)")[:4]
# A token transfer to a fresh slot costs about 51k gas on the dev token; leave room.
TOKEN_TRANSFER_GAS = 90_000
NATIVE_TRANSFER_GAS = 21_000
DEPLOY_GAS = 2_000_000


@cache
def artifact() -> dict[str, Any]:
    """Return the committed compiled artifact (abi, bytecode)."""
    data: dict[str, Any] = json.loads(ARTIFACT_PATH.read_text())
    return data


def transfer_calldata(recipient: str, amount_minor: int) -> bytes:
    """Return ABI-encoded calldata for ``transfer(recipient, amount)``."""
    assert 0 <= amount_minor < 2**256, f"amount was {amount_minor}, must fit uint256"
    address = bytes.fromhex(recipient.removeprefix("0x"))
    assert len(address) == 20, f"recipient was {recipient!r}, must be 20 bytes"
    return TRANSFER_SELECTOR + address.rjust(32, b"\0") + amount_minor.to_bytes(32, "big")
