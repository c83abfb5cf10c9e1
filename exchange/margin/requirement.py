"""Initial and maintenance margin of one position (pure integer arithmetic).

Linear (perpetuals, futures): ``notional(|size|, mark) * rate`` where the
rate is the risk-limit tier of that notional; the whole position pays its
tier's rate, so a larger position needs a higher margin rate.

Options: buyers need nothing beyond the premium they paid upfront (their
worst case is losing it). Sellers post, per contract, a standard-portfolio
style requirement ``max(rate * S - OTM, floor * S) + mark`` (S = index of
the underlying, OTM = out-of-the-money amount), scaled to the contract size.
"""

from __future__ import annotations

from exchange.instruments import PPM, InstrumentSpec


def linear_margin(spec: InstrumentSpec, size: int, mark: int) -> tuple[int, int]:
    """Return (initial, maintenance) margin of a linear position of signed ``size``."""
    notional = abs(size) * mark // spec.contracts_per_unit
    tier = spec.tier(notional)
    return notional * tier.im_ppm // PPM, notional * tier.mm_ppm // PPM


def option_seller_margin(spec: InstrumentSpec, size: int, mark: int, index: int) -> tuple[int, int]:
    """Return (initial, maintenance) margin of a short option position (``size`` < 0)."""
    assert spec.strike is not None and size < 0
    rule = spec.option_margin
    otm = max(0, spec.strike - index) if spec.option_type == "call" else max(0, index - spec.strike)
    im_unit = max(rule.im_ppm * index // PPM - otm, rule.im_floor_ppm * index // PPM) + mark
    mm_unit = max(rule.mm_ppm * index // PPM - otm, rule.mm_floor_ppm * index // PPM) + mark
    qty = -size
    cpu = spec.contracts_per_unit
    return qty * im_unit // cpu, qty * mm_unit // cpu


def position_margin(spec: InstrumentSpec, size: int, mark: int, index: int) -> tuple[int, int]:
    """Return (initial, maintenance) margin of any position."""
    if size == 0:
        return 0, 0
    if spec.is_option:
        return (0, 0) if size > 0 else option_seller_margin(spec, size, mark, index)
    return linear_margin(spec, size, mark)


def position_value(spec: InstrumentSpec, size: int, cost: int, mark: int) -> int:
    """Return what the position adds to equity at ``mark``.

    Futures: unrealised PnL (the cash has not moved). Options: the market
    value of the position, because the premium already moved at the fill.
    """
    value = size * mark // spec.contracts_per_unit
    return value if spec.is_option else value - cost


def tier_ceiling_price(spec: InstrumentSpec, size: int, mark: int) -> int | None:
    """Return the price at which the position's notional leaves its current tier (None: top)."""
    if size == 0 or spec.is_option:
        return None
    notional = abs(size) * mark // spec.contracts_per_unit
    tier = spec.tier(notional)
    if tier is spec.tiers[-1]:
        return None
    return tier.max_notional * spec.contracts_per_unit // abs(size)
