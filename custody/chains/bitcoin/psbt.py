"""Unsigned PSBTs of the cold Bitcoin wallet: built on the platform (custody.chains.bitcoin.cold).

Moved out of the offline signer package: only the platform builds them; the
signer checks and signs what it is given (signer.bitcoin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]
from embit.psbt import PSBT, DerivationPath  # type: ignore[import-untyped, unused-ignore]
from embit.script import address_to_scriptpubkey  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import (  # type: ignore[import-untyped, unused-ignore]
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from signer.anchors import parse_descriptor
from signer.bundle import SEQUENCE_RBF, SEQUENCE_VALUES

RBF_SEQUENCE = SEQUENCE_VALUES[SEQUENCE_RBF]


@dataclass(frozen=True, slots=True)
class Utxo:
    """A coin of the wallet to spend: outpoint, amount, descriptor position and previous transaction."""

    txid_hex: str
    vout: int
    amount_sat: int
    branch: int
    index: int
    previous_tx: bytes  # The whole transaction that created the coin: the signer hashes it.


def build_psbt(
    descriptor_text: str,
    network: str,
    utxos: Sequence[Utxo],
    destination: str,
    amount_sat: int,
    fee_sat: int,
    change_index: int,
) -> str:
    """Return an unsigned PSBT (base64) paying `destination`, change to branch 1 at `change_index`.

    Inputs carry the previous transaction (non_witness_utxo) and the
    matching witness_utxo, witness_script and the key origins of all
    cosigners; the change output carries its witness script and key origins,
    which is what lets a signer prove it is ours. nLockTime is 0 and every
    input signals RBF (the bundle states sequence "rbf").
    """
    descriptor = parse_descriptor(descriptor_text, "build_psbt")
    change_sat = sum(u.amount_sat for u in utxos) - amount_sat - fee_sat
    if amount_sat <= 0 or fee_sat < 0 or change_sat < 0:
        raise ValueError(
            f"amount {amount_sat}, fee {fee_sat}, change {change_sat} sat: must be positive / >= 0"
        )
    destination_script = address_to_scriptpubkey(destination)
    change = descriptor.derive(change_index, branch_index=1)
    vout = [TransactionOutput(amount_sat, destination_script)]
    if change_sat > 0:
        vout.append(TransactionOutput(change_sat, change.script_pubkey()))
    vin = [TransactionInput(bytes.fromhex(u.txid_hex), u.vout, sequence=RBF_SEQUENCE) for u in utxos]
    psbt = PSBT(Transaction(vin=vin, vout=vout))
    for inp, utxo in zip(psbt.inputs, utxos, strict=True):
        derived = descriptor.derive(utxo.index, branch_index=utxo.branch)
        previous = Transaction.parse(utxo.previous_tx)
        output = previous.vout[utxo.vout]
        if previous.txid().hex() != utxo.txid_hex or output.value != utxo.amount_sat:
            raise ValueError(f"previous transaction of {utxo.txid_hex}:{utxo.vout} does not match the coin")
        inp.non_witness_utxo = previous
        inp.witness_utxo = TransactionOutput(utxo.amount_sat, derived.script_pubkey())
        inp.witness_script = derived.witness_script()
        _add_origins(inp, descriptor, utxo.branch, utxo.index)
    if change_sat > 0:
        psbt.outputs[1].witness_script = change.witness_script()
        _add_origins(psbt.outputs[1], descriptor, 1, change_index)
    _ = NETWORKS[network]  # An unknown network name is a KeyError here, not a bad PSBT later.
    return str(psbt.to_string())


def _add_origins(scope: Any, descriptor: Any, branch: int, index: int) -> None:
    for key in descriptor.keys:
        pub = key.derive(index, branch_index=branch).get_public_key()
        scope.bip32_derivations[pub] = DerivationPath(
            key.origin.fingerprint, [*key.origin.derivation, branch, index]
        )
