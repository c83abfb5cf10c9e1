"""Transactions: sizes, dust, and BIP143 signature checks for P2WPKH and P2WSH multisig inputs.

This is what the embedded regtest chain runs to decide whether a spend is
valid, and what the hot wallet uses to sign its own P2WPKH inputs. The rules
follow Bitcoin Core's policy where it matters for money: SIGHASH_ALL only,
low-S not required, CHECKMULTISIG matching signatures to keys in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embit import ec  # type: ignore[import-untyped, unused-ignore]
from embit.hashes import hash160  # type: ignore[import-untyped, unused-ignore]
from embit.script import Script, Witness, p2pkh  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import SIGHASH, Transaction  # type: ignore[import-untyped, unused-ignore]

OP_0 = 0x00
OP_CHECKMULTISIG = 0xAE
OP_1 = 0x51
OP_16 = 0x60
MAX_MULTISIG_KEYS = 15
# Virtual sizes (vbytes) used for fee estimates, rounded up so estimates never under-pay.
TX_OVERHEAD_VB = 11
P2WPKH_INPUT_VB = 68
P2WSH_2OF3_INPUT_VB = 105
P2WPKH_OUTPUT_VB = 31
P2WSH_OUTPUT_VB = 43
# Bitcoin Core's dust limits at its default 3 sat/vB dust relay fee.
DUST_P2WPKH_SAT = 294
DUST_P2WSH_SAT = 330
DUST_OTHER_SAT = 546


class ScriptKind:
    """The output types we understand."""

    P2WPKH = "p2wpkh"
    P2WSH = "p2wsh"
    OTHER = "other"


def script_kind(script: bytes) -> str:
    """Return the kind of a scriptPubKey."""
    if len(script) == 22 and script[0] == OP_0 and script[1] == 20:
        return ScriptKind.P2WPKH
    if len(script) == 34 and script[0] == OP_0 and script[1] == 32:
        return ScriptKind.P2WSH
    return ScriptKind.OTHER


def dust_limit_sat(script: bytes) -> int:
    """Return the smallest output value Bitcoin Core relays for this scriptPubKey."""
    kind = script_kind(script)
    if kind == ScriptKind.P2WPKH:
        return DUST_P2WPKH_SAT
    if kind == ScriptKind.P2WSH:
        return DUST_P2WSH_SAT
    return DUST_OTHER_SAT


def output_vbytes(script: bytes) -> int:
    """Return the virtual size an output with this script adds."""
    return 9 + len(script)


def input_vbytes(script: bytes) -> int:
    """Return the estimated virtual size of spending an output with this script (ours only)."""
    return P2WSH_2OF3_INPUT_VB if script_kind(script) == ScriptKind.P2WSH else P2WPKH_INPUT_VB


def vsize(tx: Any) -> int:
    """Return the BIP141 virtual size of a transaction."""
    full = len(tx.serialize())
    stripped = len(_stripped(tx))
    weight = stripped * 3 + full
    return (weight + 3) // 4


def _stripped(tx: Any) -> bytes:
    clone = Transaction.parse(tx.serialize())
    for vin in clone.vin:
        vin.witness = Witness([])
    return bytes(clone.serialize())


def txid_of(raw: bytes) -> str:
    """Return the txid (hex, display order) of a raw transaction."""
    return str(Transaction.parse(raw).txid().hex())


@dataclass(frozen=True, slots=True)
class Prevout:
    """The output an input spends: its value and scriptPubKey."""

    value_sat: int
    script: bytes


def verify_input(tx: Any, index: int, prevout: Prevout) -> str | None:
    """Return None if input ``index`` validly spends ``prevout``, else the reason it does not."""
    vin = tx.vin[index]
    if vin.script_sig.data:
        return f"input {index}: native segwit spends must have an empty scriptSig"
    items = list(vin.witness.items)
    kind = script_kind(prevout.script)
    if kind == ScriptKind.P2WPKH:
        return _verify_p2wpkh(tx, index, prevout, items)
    if kind == ScriptKind.P2WSH:
        return _verify_p2wsh(tx, index, prevout, items)
    return f"input {index}: spending a {prevout.script.hex()} output is not supported"


def _verify_p2wpkh(tx: Any, index: int, prevout: Prevout, items: list[bytes]) -> str | None:
    if len(items) != 2:
        return f"input {index}: P2WPKH witness has {len(items)} items, needs 2"
    signature, pubkey = items
    if hash160(pubkey) != prevout.script[2:]:
        return f"input {index}: public key does not hash to the P2WPKH program"
    script_code = p2pkh(ec.PublicKey.parse(pubkey))
    return _check_signature(tx, index, prevout.value_sat, script_code, pubkey, signature)


def _verify_p2wsh(tx: Any, index: int, prevout: Prevout, items: list[bytes]) -> str | None:
    if len(items) < 2:
        return f"input {index}: P2WSH witness has {len(items)} items"
    witness_script = items[-1]
    if hashlib.sha256(witness_script).digest() != prevout.script[2:]:
        return f"input {index}: witness script does not hash to the P2WSH program"
    parsed = parse_multisig(witness_script)
    if parsed is None:
        return f"input {index}: witness script is not an m-of-n CHECKMULTISIG"
    required, pubkeys = parsed
    dummy, signatures = items[0], items[1:-1]
    if dummy != b"":
        return f"input {index}: CHECKMULTISIG dummy element must be empty (NULLDUMMY)"
    if len(signatures) != required:
        return f"input {index}: {len(signatures)} signatures, the script requires {required}"
    script_code = Script(witness_script)
    remaining = list(pubkeys)
    for signature in signatures:
        # CHECKMULTISIG walks keys in order: each signature must match a key after the previous match.
        while remaining:
            pubkey = remaining.pop(0)
            if _check_signature(tx, index, prevout.value_sat, script_code, pubkey, signature) is None:
                break
        else:
            return f"input {index}: a multisig signature does not verify against the remaining keys"
    return None


def _check_signature(
    tx: Any, index: int, value_sat: int, script_code: Any, pubkey: bytes, signature: bytes
) -> str | None:
    if len(signature) < 9 or signature[-1] != SIGHASH.ALL:
        return f"input {index}: only SIGHASH_ALL signatures are accepted"
    try:
        digest = tx.sighash_segwit(index, script_code, value_sat, SIGHASH.ALL)
        ok = ec.PublicKey.parse(pubkey).verify(ec.Signature.parse(signature[:-1]), digest)
    except Exception:  # malformed DER or public keys: an invalid signature, not a crash
        ok = False
    return None if ok else f"input {index}: signature does not verify"


def parse_multisig(script: bytes) -> tuple[int, list[bytes]] | None:
    """Return (m, [pubkeys]) for ``OP_m <keys> OP_n OP_CHECKMULTISIG``, else None."""
    if len(script) < 3 or script[-1] != OP_CHECKMULTISIG:
        return None
    m, n = script[0] - OP_1 + 1, script[-2] - OP_1 + 1
    if not (OP_1 <= script[0] <= OP_16 and OP_1 <= script[-2] <= OP_16 and 1 <= m <= n <= MAX_MULTISIG_KEYS):
        return None
    keys: list[bytes] = []
    position = 1
    while position < len(script) - 2:
        size = script[position]
        if size not in (33, 65):
            return None
        keys.append(script[position + 1 : position + 1 + size])
        position += 1 + size
    if position != len(script) - 2 or len(keys) != n:
        return None
    return m, keys


def sign_p2wpkh(tx: Any, index: int, value_sat: int, key: Any) -> None:
    """Put a SIGHASH_ALL P2WPKH witness for ``key`` on input ``index``."""
    pub = key.get_public_key()
    digest = tx.sighash_segwit(index, p2pkh(pub), value_sat, SIGHASH.ALL)
    signature = key.sign(digest).serialize() + bytes([SIGHASH.ALL])
    tx.vin[index].witness = Witness([signature, pub.sec()])


def estimate_vbytes(input_scripts: Sequence[bytes], output_scripts: Sequence[bytes]) -> int:
    """Return the estimated virtual size of a transaction with these inputs and outputs."""
    return (
        TX_OVERHEAD_VB
        + sum(input_vbytes(s) for s in input_scripts)
        + sum(output_vbytes(s) for s in output_scripts)
    )
