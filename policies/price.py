"""USD-equivalent value of an asset amount, in integer cents.

Prices are integers: US cents per whole unit of the asset (1 BTC = 10^8
satoshi). Conversion rounds up, which is the safe direction for both kinds
of policy threshold: a ">= limit" rule fires no later, and a "< limit"
fast path is taken no more often, than with exact arithmetic.
"""

from __future__ import annotations

MAX_ASSET_DECIMALS = 30


def usd_cents(amount_minor: int, usd_cents_per_unit: int, asset_decimals: int) -> int:
    """Return the USD value of `amount_minor` in cents, rounded up."""
    assert amount_minor >= 0, f"amount_minor was {amount_minor}, must be >= 0"
    assert usd_cents_per_unit >= 0, f"price was {usd_cents_per_unit}, must be >= 0"
    assert 0 <= asset_decimals <= MAX_ASSET_DECIMALS, f"decimals was {asset_decimals}"
    scale: int = 10**asset_decimals
    return -(-amount_minor * usd_cents_per_unit // scale)
