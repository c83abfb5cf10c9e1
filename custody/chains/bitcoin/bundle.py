"""Check a finalised cold spend against what was prepared and approved.

The Bitcoin cold flow runs through the chain-generic bundle service
(custody.bundles; the Bitcoin part is custody.bundles.bitcoin): the service
exports the bundle carrying the PSBT of :meth:`ColdWallet.prepare_spend`,
imports the cosigners' signed results, and owns every ledger entry of the
cold spend. Here is the one Bitcoin-specific check it runs on the combined,
finalised transaction before broadcasting it: exactly the coins locked for
the spend, exactly the approved destination output and amount, change (if
any) to the recorded cold change address, a fee of exactly the prepared fee,
and every input's witness valid.
"""

from __future__ import annotations

from embit.transaction import Transaction  # type: ignore[import-untyped, unused-ignore]

from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.cold import ColdWallet


def check_final(
    cold: ColdWallet,
    record: str,
    raw: bytes,
    destination: str,
    amount_sat: int,
    fee_sat: int,
    change_address: str | None,
) -> list[str]:
    """Return every way the final transaction differs from the approved spend (empty: it matches)."""
    tx = Transaction.parse(raw)
    problems: list[str] = []
    coins = {(c.txid, c.vout): c for c in cold.locked_coins(record)}
    spent = [(vin.txid.hex(), vin.vout) for vin in tx.vin]
    if sorted(spent) != sorted(coins):
        problems.append(f"inputs {spent} are not exactly the {len(coins)} coins locked for {record}")
    expected = [(cold.adapter.script_of(destination), amount_sat)]
    if change_address is not None:
        change = sum(c.amount_sat for c in coins.values()) - amount_sat - fee_sat
        expected.append((cold.adapter.script_of(change_address), change))
    actual = [(bytes(out.script_pubkey.data), out.value) for out in tx.vout]
    if actual != expected:
        problems.append("outputs differ from the approved destination, amount and change")
    total_in = sum(coins[op].amount_sat for op in spent if op in coins)
    if not problems and total_in - sum(value for _, value in actual) != fee_sat:
        problems.append(f"fee is {total_in - sum(v for _, v in actual)} sat, approved {fee_sat} sat")
    for index, op in enumerate(spent):
        if op in coins:
            coin = coins[op]
            problem = btx.verify_input(
                tx, index, btx.Prevout(coin.amount_sat, cold.adapter.script_of(coin.address))
            )
            if problem is not None:
                problems.append(problem)
    return problems
