"""Transaction forms both sides read: the signer (offline) and the platform (custody.bundles).

Only parsing of what a bundle carries lives here, nothing that builds or
signs: the platform imports this and `signer.bundle` / `signer.signed`, never
the signing modules (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

from embit.psbt import PSBT  # type: ignore[import-untyped, unused-ignore]

from signer.bundle import BitcoinTransaction, EthereumTransaction
from signer.results import SignerCode, SignerError

MAX_INPUTS = 1000
MAX_OUTPUTS = 100


def parse_psbt(tx: BitcoinTransaction) -> Any:
    """Parse the PSBT; raise `SignerError` (7040) if embit cannot (previous transactions: `_prove_input`)."""
    try:
        psbt = PSBT.from_string(tx.psbt_base64)
    except Exception as exc:  # embit raises many exception types on bad input.
        raise SignerError(SignerCode.TX_MALFORMED, f"PSBT does not parse: {exc}") from exc
    if not 1 <= len(psbt.inputs) <= MAX_INPUTS or not 1 <= len(psbt.outputs) <= MAX_OUTPUTS:
        raise SignerError(
            SignerCode.TX_MALFORMED,
            f"PSBT has {len(psbt.inputs)} inputs and {len(psbt.outputs)} outputs, "
            f"must be 1..{MAX_INPUTS} and 1..{MAX_OUTPUTS}",
        )
    return psbt


def transaction_dict(tx: EthereumTransaction) -> dict[str, Any]:
    """Return the transaction in the dict form eth-account signs."""
    return {
        "type": 2,
        "chainId": tx.chain_id,
        "nonce": tx.nonce,
        "to": tx.to,
        "value": tx.value_wei,
        "data": "0x" + tx.data.hex(),
        "gas": tx.gas_limit,
        "maxFeePerGas": tx.max_fee_per_gas_wei,
        "maxPriorityFeePerGas": tx.max_priority_fee_per_gas_wei,
        "accessList": [],
    }
