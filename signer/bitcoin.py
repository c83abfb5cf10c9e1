"""Bitcoin: check a PSBT against the intent, sign our inputs, and build PSBTs.

The wallet is an M-of-N P2WSH sortedmulti descriptor with key origins.
Input amounts come from each input's witness_utxo; every output is either
the destination or provably ours (its key origins derive, through our
descriptor, to exactly its script). Only inputs with SIGHASH_ALL (or no
sighash type) are accepted, so a signature always commits to all outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embit import bip32  # type: ignore[import-untyped, unused-ignore]
from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]
from embit.psbt import PSBT, DerivationPath  # type: ignore[import-untyped, unused-ignore]
from embit.script import address_to_scriptpubkey  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import (  # type: ignore[import-untyped, unused-ignore]
    SIGHASH,
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from signer.anchors import BitcoinWallet, parse_descriptor
from signer.bundle import BitcoinTransaction, Intent
from signer.checks import TxCheck
from signer.results import SignerCode, SignerError

MAX_INPUTS = 500
MAX_OUTPUTS = 100
RBF_SEQUENCE = 0xFFFFFFFD


def parse_psbt(tx: BitcoinTransaction) -> Any:
    """Parse the PSBT; raise `SignerError` (7040) if embit cannot or its UTXO data is inconsistent."""
    try:
        psbt = PSBT.from_string(tx.psbt_base64)
        psbt.verify(ignore_missing=True)
    except Exception as exc:  # embit raises many exception types on bad input.
        raise SignerError(SignerCode.TX_MALFORMED, f"PSBT does not parse: {exc}") from exc
    if not 1 <= len(psbt.inputs) <= MAX_INPUTS or not 1 <= len(psbt.outputs) <= MAX_OUTPUTS:
        raise SignerError(
            SignerCode.TX_MALFORMED,
            f"PSBT has {len(psbt.inputs)} inputs and {len(psbt.outputs)} outputs, "
            f"must be 1..{MAX_INPUTS} and 1..{MAX_OUTPUTS}",
        )
    return psbt


def check_bitcoin(intent: Intent, tx: BitcoinTransaction, wallet: BitcoinWallet) -> TxCheck:
    """Compare the PSBT with the intent; return every refusal and the facts shown to the operator."""
    check = TxCheck()
    try:
        psbt = parse_psbt(tx)
    except SignerError as exc:
        check.refusals.append(exc.refusal)
        return check
    network = NETWORKS[wallet.network]
    total_in_sat = _check_inputs(psbt, wallet, check)
    destination_script = _address_script(intent.destination, network)
    if destination_script is None:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH,
            f"destination {intent.destination} is not a valid {wallet.network} address",
        )
    paid_sat, paid_outputs = _check_outputs(psbt, wallet, destination_script, check)
    if destination_script is not None and paid_outputs != 1:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH,
            f"{paid_outputs} outputs pay the destination {intent.destination}, exactly 1 must",
        )
    elif destination_script is not None and paid_sat != intent.amount_minor:
        check.refuse(
            SignerCode.AMOUNT_MISMATCH,
            f"the destination output pays {paid_sat} sat, the intent says {intent.amount_minor} sat",
        )
    if total_in_sat is not None:
        fee_sat = total_in_sat - sum(out.value for out in psbt.tx.vout)
        check.fact(f"fee: {fee_sat} sat (cap {intent.fee_cap_minor} sat)")
        if fee_sat < 0:
            check.refuse(SignerCode.TX_MALFORMED, f"outputs exceed inputs by {-fee_sat} sat")
        elif fee_sat > intent.fee_cap_minor:
            check.refuse(
                SignerCode.FEE_OVER_CAP, f"fee is {fee_sat} sat, above the cap of {intent.fee_cap_minor} sat"
            )
    return check


def _check_inputs(psbt: Any, wallet: BitcoinWallet, check: TxCheck) -> int | None:
    """Check every input is ours with a known amount; return the input total, or None if unknown."""
    total_sat = 0
    known = True
    for i, inp in enumerate(psbt.inputs):
        if inp.sighash_type not in (None, SIGHASH.ALL):
            check.refuse(
                SignerCode.SIGHASH_UNSUPPORTED, f"input {i} asks for sighash {inp.sighash_type}, only ALL"
            )
        if inp.witness_utxo is None:
            check.refuse(SignerCode.INPUT_AMOUNT_MISSING, f"input {i} has no witness_utxo (amount unknown)")
            known = False
            continue
        total_sat += inp.witness_utxo.value
        position = owned_position(wallet.descriptor, inp, inp.witness_utxo.script_pubkey)
        if position is None or inp.witness_script is None:
            check.refuse(
                SignerCode.INPUT_NOT_OURS,
                f"input {i} ({inp.witness_utxo.value} sat) is not provably from wallet {wallet.name}",
            )
        else:
            check.fact(f"input {i}: {inp.witness_utxo.value} sat from {wallet.name} {_where(position)}")
    return total_sat if known else None


def _check_outputs(psbt: Any, wallet: BitcoinWallet, destination: Any, check: TxCheck) -> tuple[int, int]:
    network = NETWORKS[wallet.network]
    paid_sat = 0
    paid_outputs = 0
    for j, out in enumerate(psbt.tx.vout):
        address = _script_address(out.script_pubkey, network)
        if destination is not None and out.script_pubkey == destination:
            paid_sat += out.value
            paid_outputs += 1
            check.fact(f"output {j}: {out.value} sat to the destination {address}")
            continue
        position = owned_position(wallet.descriptor, psbt.outputs[j], out.script_pubkey)
        if position is None:
            check.refuse(
                SignerCode.OUTPUT_NOT_OURS,
                f"output {j} pays {out.value} sat to {address}, which is neither the destination "
                f"nor provably an address of wallet {wallet.name}",
            )
        else:
            check.fact(
                f"output {j}: {out.value} sat change back to {wallet.name} {address} {_where(position)}"
            )
    return paid_sat, paid_outputs


def owned_position(descriptor: Any, scope: Any, script_pubkey: Any) -> tuple[int, int] | None:
    """Return (index, branch) if `scope`'s key origins derive through `descriptor` to `script_pubkey`.

    Every listed key must sit at the same position of the descriptor, the
    derived script must equal the script, the listed keys must be exactly
    the derived keys, and a witness script, if given, must be the derived one.
    """
    derivations = scope.bip32_derivations
    if not derivations:
        return None
    positions = {descriptor.check_derivation(der) for der in derivations.values()}
    if len(positions) != 1 or None in positions:
        return None
    position: tuple[int, int] = positions.pop()
    index, branch = position
    derived = descriptor.derive(index, branch_index=branch)
    if derived.script_pubkey() != script_pubkey:
        return None
    if scope.witness_script is not None and derived.witness_script() != scope.witness_script:
        return None
    derived_keys = {key.get_public_key().sec() for key in derived.keys}
    if derived_keys != {pub.sec() for pub in derivations}:
        return None
    return position


def _where(position: tuple[int, int]) -> str:
    index, branch = position
    return f"({'change' if branch == 1 else 'receive'} branch {branch}, index {index})"


def _address_script(address: str, network: dict[str, Any]) -> Any:
    """Return the script of `address` if it is a valid address of `network` in canonical form."""
    try:
        script = address_to_scriptpubkey(address)
        if script.address(network) != address:
            return None
    except Exception:  # embit raises assorted errors for invalid addresses.
        return None
    return script


def _script_address(script: Any, network: dict[str, Any]) -> str:
    try:
        return str(script.address(network))
    except Exception:  # Non-standard scripts have no address; show the raw script.
        return f"script {script.data.hex()}"


def root_key(seed: bytes, network: str) -> Any:
    """Return the BIP32 root key of `seed` for `network` (private; callers must not keep it)."""
    return bip32.HDKey.from_seed(seed, version=NETWORKS[network]["xprv"])


def sign_bitcoin(tx: BitcoinTransaction, wallet: BitcoinWallet, seed: bytes) -> tuple[str, str]:
    """Add our partial signature to every input; return (signed PSBT base64, our fingerprint hex)."""
    root = root_key(seed, wallet.network)
    fingerprint = root.my_fingerprint
    ours = [key for key in wallet.descriptor.keys if key.origin.fingerprint == fingerprint]
    if not ours:
        raise SignerError(
            SignerCode.KEY_NOT_IN_WALLET,
            f"this signer's key (fingerprint {fingerprint.hex()}) is not a key of wallet {wallet.name}",
        )
    for key in ours:
        derived = root.derive(key.origin.derivation)
        if derived.key.sec() != key.key.key.sec() or derived.chain_code != key.key.chain_code:
            raise SignerError(
                SignerCode.KEY_NOT_IN_WALLET,
                f"wallet {wallet.name} lists fingerprint {fingerprint.hex()} with an xpub "
                "this seed does not have",
            )
    psbt = parse_psbt(tx)
    try:
        count = psbt.sign_with(root)
    except Exception as exc:  # embit raises PSBTError and others when derivations disagree.
        raise SignerError(SignerCode.KEY_NOT_IN_WALLET, f"could not sign: {exc}") from exc
    if count < len(psbt.inputs):
        raise SignerError(
            SignerCode.KEY_NOT_IN_WALLET,
            f"signed {count} of {len(psbt.inputs)} inputs; every input must be ours",
        )
    return str(psbt.to_string()), fingerprint.hex()


@dataclass(frozen=True, slots=True)
class Utxo:
    """A coin of the wallet to spend: outpoint, amount and its descriptor position."""

    txid_hex: str
    vout: int
    amount_sat: int
    branch: int
    index: int


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

    Inputs carry witness_utxo, witness_script and the key origins of all
    cosigners; the change output carries its witness script and key origins,
    which is what lets a signer prove it is ours.
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
