"""Coin selection: branch-and-bound for a change-free match, largest-first with change as fallback.

Pure functions over (id, amount, input size) triples. Fees are integer
satoshis: ``vbytes * fee_rate_sat_vb``. Branch-and-bound (as in Bitcoin Core,
after Murch's thesis) looks for inputs whose *effective* values (amount minus
the fee to spend them) land in ``[target, target + cost_of_change]``; then no
change output is made and the small excess goes to the fee. Otherwise coins
are added largest first until amount + fee is covered with a change output
of at least the dust limit; a would-be change below dust is dropped into the fee.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from custody.chains.bitcoin.transaction import TX_OVERHEAD_VB

BNB_MAX_TRIES = 20_000
MAX_CANDIDATES = 200
MAX_INPUTS = 100


@dataclass(frozen=True, slots=True)
class Coin:
    """A spendable output: its id, value and the vbytes its input adds."""

    id: str
    amount_sat: int
    input_vb: int


@dataclass(frozen=True, slots=True)
class Selection:
    """Chosen coins; the fee and the change (0: no change output). inputs = amount + fee + change."""

    coins: tuple[Coin, ...]
    fee_sat: int
    change_sat: int
    algorithm: str

    @property
    def total_sat(self) -> int:
        """Return the sum of the inputs."""
        return sum(c.amount_sat for c in self.coins)


@dataclass(frozen=True, slots=True)
class Shape:
    """The parts of the transaction that do not depend on the inputs, in vbytes and satoshis."""

    fee_rate_sat_vb: int
    payment_vb: int  # the recipient output(s)
    change_vb: int  # a change output to us
    change_spend_vb: int  # spending that change later
    change_dust_sat: int


def select_coins(coins: Sequence[Coin], amount_sat: int, shape: Shape) -> Selection | None:
    """Return a selection paying ``amount_sat`` at ``shape``'s fee rate, or None if funds are short."""
    assert amount_sat > 0 and shape.fee_rate_sat_vb >= 1, (amount_sat, shape.fee_rate_sat_vb)
    rate = shape.fee_rate_sat_vb
    usable = sorted(
        (c for c in coins if c.amount_sat > c.input_vb * rate),
        key=lambda c: (-(c.amount_sat - c.input_vb * rate), c.id),
    )[:MAX_CANDIDATES]
    base_fee = (TX_OVERHEAD_VB + shape.payment_vb) * rate
    effective = [c.amount_sat - c.input_vb * rate for c in usable]
    found = _search(
        usable, effective, amount_sat + base_fee, (shape.change_vb + shape.change_spend_vb) * rate
    )
    selection: Selection | None
    if found is not None:
        total = sum(c.amount_sat for c in found)
        selection = Selection(tuple(found), total - amount_sat, 0, "bnb")
    else:
        selection = _largest_first(usable, amount_sat, shape)
    if selection is not None:
        _check(selection, amount_sat, shape)
    return selection


def _search(coins: list[Coin], values: list[int], target: int, cost_of_change: int) -> list[Coin] | None:
    """Depth-first include/exclude search; the first-found minimum-waste subset within the window."""
    suffix = [0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + values[i]
    best: list[int] | None = None
    best_waste = cost_of_change + 1
    tries = 0
    stack: list[tuple[int, int, tuple[int, ...]]] = [(0, 0, ())]
    while stack and tries < BNB_MAX_TRIES:
        tries += 1
        index, total, chosen = stack.pop()
        if total > target + cost_of_change or len(chosen) > MAX_INPUTS:
            continue
        if total >= target:
            if total - target < best_waste:
                best, best_waste = list(chosen), total - target
            continue
        if index == len(values) or total + suffix[index] < target:
            continue
        stack.append((index + 1, total, chosen))  # exclude (explored second)
        stack.append((index + 1, total + values[index], (*chosen, index)))  # include first
    return None if best is None else [coins[i] for i in best]


def _largest_first(coins: list[Coin], amount_sat: int, shape: Shape) -> Selection | None:
    rate = shape.fee_rate_sat_vb
    chosen: list[Coin] = []
    total = inputs_vb = 0
    for coin in coins[:MAX_INPUTS]:
        chosen.append(coin)
        total += coin.amount_sat
        inputs_vb += coin.input_vb
        base_vb = TX_OVERHEAD_VB + shape.payment_vb + inputs_vb
        change = total - amount_sat - (base_vb + shape.change_vb) * rate
        if change >= shape.change_dust_sat:
            return Selection(tuple(chosen), total - amount_sat - change, change, "largest_first")
        if total - amount_sat >= base_vb * rate:
            # Change would be dust: leave it out and let the (small) excess go to the miners.
            return Selection(tuple(chosen), total - amount_sat, 0, "largest_first_no_change")
    return None


def _check(selection: Selection, amount_sat: int, shape: Shape) -> None:
    """Assert the selection's invariants: it balances, pays at least the rate, change is not dust."""
    assert selection.total_sat == amount_sat + selection.fee_sat + selection.change_sat
    assert selection.change_sat == 0 or selection.change_sat >= shape.change_dust_sat
    vb = TX_OVERHEAD_VB + shape.payment_vb + sum(c.input_vb for c in selection.coins)
    vb += shape.change_vb if selection.change_sat else 0
    assert selection.fee_sat >= vb * shape.fee_rate_sat_vb, (selection, vb)
