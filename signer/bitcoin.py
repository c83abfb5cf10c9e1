"""Bitcoin: check a PSBT against the intent, sign our inputs, and build PSBTs.

The wallet is an M-of-N P2WSH sortedmulti descriptor with key origins.
Nothing the PSBT claims about an input is trusted: every input must carry
its full previous transaction (non_witness_utxo), which must hash to the
prevout's txid; amounts and scripts come only from it, and any
witness_utxo must equal it (CVE-2020-14199: a segwit signature commits to
its own input's amount only, so two bundles each lying about the other
input's witness_utxo could otherwise burn the difference as fee). Every
output is either the destination or change to our descriptor's change
branch within the anchors' index window. nLockTime and every nSequence
must be what the bundle states; only SIGHASH_ALL is accepted, so a
signature always commits to all outputs. Offline-checkable consensus and
standardness limits (duplicate inputs, outputs above inputs, dust, size)
are refused before anything is signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embit import bip32  # type: ignore[import-untyped, unused-ignore]
from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]
from embit.script import address_to_scriptpubkey  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import (  # type: ignore[import-untyped, unused-ignore]
    SIGHASH,
)

from signer.anchors import BitcoinWallet
from signer.bundle import SEQUENCE_RBF, SEQUENCE_VALUES, BitcoinTransaction, Intent
from signer.checks import TxCheck
from signer.results import SignerCode, SignerError
from signer.wire import parse_psbt

RBF_SEQUENCE = SEQUENCE_VALUES[SEQUENCE_RBF]
CHANGE_BRANCH = 1
# Bitcoin Core's standardness limit (MAX_STANDARD_TX_WEIGHT): heavier transactions do not relay.
MAX_STANDARD_WEIGHT = 400_000
TX_VERSIONS = (1, 2)
MIN_RELAY_SAT_VB = 1  # Bitcoin Core's default minimum relay fee rate.
# Dust: an output worth less than spending it costs at 3 sat/vB (Bitcoin Core's dustRelayFee).
DUST_RELAY_SAT_PER_KVB = 3_000
_SPEND_VBYTES_WITNESS = 67
_SPEND_VBYTES_LEGACY = 148
_SIGNATURE_BYTES = 73  # DER signature, at most 72 bytes, plus the sighash byte.


@dataclass(frozen=True, slots=True)
class ProvenInput:
    """An input's outpoint, and its amount and script as its previous transaction proves them."""

    txid_hex: str
    vout: int
    amount_sat: int
    script_pubkey: Any


@dataclass(frozen=True, slots=True)
class BitcoinSummary:
    """What the operator is shown about a PSBT, from proven amounts only."""

    fee_sat: int
    vsize: int
    change: tuple[tuple[int, int, int], ...]  # (amount sat, branch, index)
    locktime: int
    sequences: tuple[int, ...]

    @property
    def fee_rate_sat_vb_x100(self) -> int:
        """Return the fee rate in hundredths of a sat/vB (integer, rounded up)."""
        return -(-self.fee_sat * 100 // self.vsize)


def check_bitcoin(intent: Intent, tx: BitcoinTransaction, wallet: BitcoinWallet) -> TxCheck:
    """Compare the PSBT with the intent; return every refusal and the facts shown to the operator."""
    check = TxCheck()
    try:
        psbt = parse_psbt(tx)
    except SignerError as exc:
        check.refusals.append(exc.refusal)
        return check
    network = NETWORKS[wallet.network]
    _check_shape(psbt, tx, check)
    proven = _check_inputs(psbt, wallet, check)
    destination_script = _address_script(intent.destination, network)
    if destination_script is None:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH,
            f"destination {intent.destination} is not a valid {wallet.network} address",
        )
    paid_sat, paid_outputs, change = _check_outputs(psbt, wallet, destination_script, check)
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
    vsize = _estimated_vsize(psbt, wallet)
    if vsize * 4 > MAX_STANDARD_WEIGHT:
        check.refuse(
            SignerCode.TX_TOO_LARGE,
            f"the signed transaction would weigh about {vsize * 4} WU, above the standard "
            f"{MAX_STANDARD_WEIGHT} WU; nodes would not relay it",
        )
    if proven is not None:
        _check_fee(psbt, intent, proven, vsize, change, check)
    return check


def _check_fee(
    psbt: Any,
    intent: Intent,
    proven: list[ProvenInput],
    vsize: int,
    change: list[tuple[int, int, int]],
    check: TxCheck,
) -> None:
    """Check the fee, from the proven input amounts only, against the approved cap."""
    fee_sat = sum(p.amount_sat for p in proven) - sum(out.value for out in psbt.tx.vout)
    if fee_sat < 0:
        check.refuse(SignerCode.OUTPUTS_EXCEED_INPUTS, f"outputs exceed the proven inputs by {-fee_sat} sat")
    elif fee_sat > intent.fee_cap_minor:
        check.refuse(
            SignerCode.FEE_OVER_CAP,
            f"fee is {fee_sat} sat (from the proven input amounts), above the approved cap of "
            f"{intent.fee_cap_minor} sat",
        )
    check.bitcoin = BitcoinSummary(
        fee_sat, vsize, tuple(change), psbt.tx.locktime, tuple(inp.sequence for inp in psbt.tx.vin)
    )
    check.fee_minor = fee_sat
    check.fact(f"fee: {fee_sat} sat (cap {intent.fee_cap_minor} sat), about {vsize} vB")
    if 0 <= fee_sat < vsize * MIN_RELAY_SAT_VB:
        check.warn(
            f"LOW FEE: {fee_sat} sat for about {vsize} vB is below {MIN_RELAY_SAT_VB} sat/vB; nodes will "
            "not relay it and the coins stay locked until a new bundle replaces it."
        )


def _check_shape(psbt: Any, tx: BitcoinTransaction, check: TxCheck) -> None:
    """Check version, nLockTime, every nSequence and duplicate inputs against the stated intent."""
    unsigned = psbt.tx
    if unsigned.version not in TX_VERSIONS:
        check.refuse(SignerCode.TX_MALFORMED, f"transaction version is {unsigned.version}, must be 1 or 2")
    if unsigned.locktime != tx.locktime:
        check.refuse(
            SignerCode.LOCKTIME_MISMATCH,
            f"nLockTime is {unsigned.locktime}, the bundle states {tx.locktime}",
        )
    for i, vin in enumerate(unsigned.vin):
        if vin.sequence != tx.sequence_value:
            check.refuse(
                SignerCode.SEQUENCE_MISMATCH,
                f"input {i} nSequence is {vin.sequence:#010x}, the bundle states {tx.sequence} "
                f"({tx.sequence_value:#010x})",
            )
    seen: set[tuple[bytes, int]] = set()
    for i, vin in enumerate(unsigned.vin):
        outpoint = (bytes(vin.txid), vin.vout)
        if outpoint in seen:
            check.refuse(
                SignerCode.INPUT_DUPLICATE, f"input {i} spends {vin.txid.hex()}:{vin.vout} a second time"
            )
        seen.add(outpoint)


def _check_inputs(psbt: Any, wallet: BitcoinWallet, check: TxCheck) -> list[ProvenInput] | None:
    """Prove every input from its previous transaction; return them, or None if any is unproven."""
    proven: list[ProvenInput] = []
    for i, inp in enumerate(psbt.inputs):
        if inp.sighash_type not in (None, SIGHASH.ALL):
            check.refuse(
                SignerCode.SIGHASH_UNSUPPORTED, f"input {i} asks for sighash {inp.sighash_type}, only ALL"
            )
        one = _prove_input(i, inp, check)
        if one is None:
            continue
        proven.append(one)
        position = owned_position(wallet.descriptor, inp, one.script_pubkey)
        if position is None or inp.witness_script is None:
            check.refuse(
                SignerCode.INPUT_NOT_OURS,
                f"input {i} ({one.amount_sat} sat) is not provably from wallet {wallet.name}",
            )
        else:
            check.fact(f"input {i}: {one.amount_sat} sat from {wallet.name} {_where(position)}")
    return proven if len(proven) == len(psbt.inputs) else None


def _prove_input(i: int, inp: Any, check: TxCheck) -> ProvenInput | None:
    previous = inp.non_witness_utxo
    if previous is None:
        check.refuse(
            SignerCode.INPUT_AMOUNT_MISSING,
            f"input {i} does not carry its previous transaction (non_witness_utxo); its amount is unproven",
        )
        return None
    if bytes(previous.txid()) != bytes(inp.txid):
        check.refuse(
            SignerCode.INPUT_UTXO_MISMATCH,
            f"input {i}: the previous transaction hashes to {previous.txid().hex()}, "
            f"the input spends {inp.txid.hex()}",
        )
        return None
    if not 0 <= inp.vout < len(previous.vout):
        check.refuse(
            SignerCode.INPUT_UTXO_MISMATCH,
            f"input {i} spends output {inp.vout}, the previous transaction has {len(previous.vout)}",
        )
        return None
    output = previous.vout[inp.vout]
    claimed = inp.witness_utxo
    if claimed is not None and (
        claimed.value != output.value or claimed.script_pubkey != output.script_pubkey
    ):
        check.refuse(
            SignerCode.INPUT_UTXO_MISMATCH,
            f"input {i}: witness_utxo claims {claimed.value} sat, the previous transaction proves "
            f"{output.value} sat"
            + ("" if claimed.script_pubkey == output.script_pubkey else " and another script"),
        )
        return None
    return ProvenInput(inp.txid.hex(), inp.vout, output.value, output.script_pubkey)


def _check_outputs(
    psbt: Any, wallet: BitcoinWallet, destination: Any, check: TxCheck
) -> tuple[int, int, list[tuple[int, int, int]]]:
    network = NETWORKS[wallet.network]
    paid_sat = 0
    paid_outputs = 0
    change: list[tuple[int, int, int]] = []
    for j, out in enumerate(psbt.tx.vout):
        address = _script_address(out.script_pubkey, network)
        dust = dust_limit_sat(out.script_pubkey.data)
        if out.value < dust:
            check.refuse(
                SignerCode.OUTPUT_DUST,
                f"output {j} pays {out.value} sat to {address}, below the dust limit of {dust} sat",
            )
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
            continue
        index, branch = position
        if branch != CHANGE_BRANCH:
            check.refuse(
                SignerCode.CHANGE_NOT_CHANGE_BRANCH,
                f"output {j} pays {out.value} sat back to {wallet.name} on its receive branch "
                f"({branch}/{index}); change must use the change branch {CHANGE_BRANCH}",
            )
        elif index > wallet.change_index_max:
            check.refuse(
                SignerCode.CHANGE_INDEX_OUT_OF_WINDOW,
                f"output {j} pays {out.value} sat to change index {index} of {wallet.name}, above this "
                f"signer's window of 0..{wallet.change_index_max}: no wallet scan would find it",
            )
        change.append((out.value, branch, index))
        check.fact(f"output {j}: {out.value} sat change back to {wallet.name} {address} {_where(position)}")
    return paid_sat, paid_outputs, change


def dust_limit_sat(script: bytes) -> int:
    """Return Bitcoin Core's dust threshold for an output paying `script` (at 3 sat/vB)."""
    output_bytes = 8 + _compact_size_len(len(script)) + len(script)
    spend = _SPEND_VBYTES_WITNESS if _is_witness_program(script) else _SPEND_VBYTES_LEGACY
    return (output_bytes + spend) * DUST_RELAY_SAT_PER_KVB // 1000


def _is_witness_program(script: bytes) -> bool:
    if not 4 <= len(script) <= 42:
        return False
    version_ok = script[0] == 0 or 0x51 <= script[0] <= 0x60
    return version_ok and script[1] + 2 == len(script)


def _compact_size_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9


def _estimated_vsize(psbt: Any, wallet: BitcoinWallet) -> int:
    """Return the virtual size of the transaction once every input carries an M-of-N witness."""
    stripped = len(psbt.tx.serialize())  # No witnesses yet: this is the stripped serialisation.
    threshold = wallet.descriptor.miniscript.args[0].num
    witness_bytes = 2  # The segwit marker and flag.
    for inp in psbt.inputs:
        script_len = len(inp.witness_script.data) if inp.witness_script is not None else 105
        items = [0] + [_SIGNATURE_BYTES] * threshold + [script_len]
        witness_bytes += _compact_size_len(len(items)) + sum(_compact_size_len(n) + n for n in items)
    weight = stripped * 4 + witness_bytes
    return -(-weight // 4)


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
    for inp in psbt.inputs:
        # Sign over the proven amount only (verification already required them equal).
        inp.witness_utxo = inp.non_witness_utxo.vout[inp.vout]
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
