"""Initial and maintenance margin of one position (pure integer arithmetic).

Linear (perpetuals, futures), Binance USD-M style: the whole position pays
the rates of the risk-limit tier its notional falls in. Maintenance is
``notional * mm_rate - maintenance_amount(tier)``, where the maintenance
amount (Binance's "cum") makes the requirement continuous where the
notional crosses a tier edge: without it a long could be liquidated by a
*favourable* move that pushed its notional into the next tier. Initial
margin is ``notional * max(tier im rate, 1 / leverage)``: the account's
chosen leverage for the symbol can only raise the rate, never go below
the tier's.

Options, Deribit style (per underlying unit, S = index of the underlying,
OTM = out-of-the-money amount): buyers need nothing beyond the premium
they paid upfront, and their IM and MM equal the option's value (it backs
no other position). Sellers:

    call  IM = max(15 % S - OTM, 10 % S) + mark      MM = 7.5 % S + mark
    put   IM = max(max(15 % S - OTM, 10 % S) + mark, MM)
          MM = max(7.5 % S, 7.5 % mark) + mark

Maintenance does not shrink with the OTM amount (Deribit's rule; the
out-of-the-money discount applies to initial margin only).
"""

from __future__ import annotations

from exchange.instruments import PPM, InstrumentSpec, RiskTier

_CUM: dict[int, tuple[tuple[RiskTier, ...], tuple[int, ...]]] = {}


def maintenance_amounts(tiers: tuple[RiskTier, ...]) -> tuple[int, ...]:
    """Return the maintenance amount of each tier (continuity offsets, Binance's ``cum``).

    Cached by the identity of the (immutable) tier tuple: hashing frozen
    dataclasses on every margin computation costs more than the arithmetic.
    """
    cached = _CUM.get(id(tiers))
    if cached is not None and cached[0] is tiers:
        return cached[1]
    amounts = _maintenance_amounts(tiers)
    _CUM[id(tiers)] = (tiers, amounts)
    return amounts


def _maintenance_amounts(tiers: tuple[RiskTier, ...]) -> tuple[int, ...]:
    out: list[int] = []
    cum = 0
    previous: RiskTier | None = None
    for tier in tiers:
        if previous is not None:
            cum += previous.max_notional * (tier.mm_ppm - previous.mm_ppm) // PPM
        out.append(cum)
        previous = tier
    return tuple(out)


def tier_index(spec: InstrumentSpec, notional: int) -> int:
    """Return the index of the tier a position of ``notional`` falls into (the last caps)."""
    for i, tier in enumerate(spec.tiers):
        if notional <= tier.max_notional:
            return i
    return len(spec.tiers) - 1


def linear_im(spec: InstrumentSpec, notional: int, leverage_ppm: int = 0) -> int:
    """Return the initial margin of a linear position of ``notional`` (whole-position tier).

    ``leverage_ppm``: the account's IM rate floor from its chosen leverage (0: none).
    """
    rate = max(spec.tier(notional).im_ppm, leverage_ppm)
    return -(-notional * rate // PPM)


def linear_mm(spec: InstrumentSpec, notional: int) -> int:
    """Return the maintenance margin of a linear position of ``notional`` (continuous in it)."""
    tiers = spec.tiers
    i = 0
    last = len(tiers) - 1
    while i < last and notional > tiers[i].max_notional:
        i += 1
    if i == 0:
        return notional * tiers[0].mm_ppm // PPM
    return max(0, notional * tiers[i].mm_ppm // PPM - maintenance_amounts(tiers)[i])


def linear_margin(spec: InstrumentSpec, size: int, mark: int, leverage_ppm: int = 0) -> tuple[int, int]:
    """Return (initial, maintenance) margin of a linear position of signed ``size``."""
    notional = abs(size) * mark // spec.contracts_per_unit
    return linear_im(spec, notional, leverage_ppm), linear_mm(spec, notional)


def option_seller_margin(spec: InstrumentSpec, size: int, mark: int, index: int) -> tuple[int, int]:
    """Return (initial, maintenance) margin of a short option position (``size`` < 0)."""
    assert spec.strike is not None and size < 0
    rule = spec.option_margin
    call = spec.option_type == "call"
    otm = max(0, spec.strike - index) if call else max(0, index - spec.strike)
    im_unit = max(rule.im_ppm * index // PPM - otm, rule.im_floor_ppm * index // PPM) + mark
    if call:
        mm_unit = rule.mm_ppm * index // PPM + mark
    else:
        mm_unit = max(rule.mm_ppm * index // PPM, rule.mm_ppm * mark // PPM) + mark
        im_unit = max(im_unit, mm_unit)
    qty = -size
    cpu = spec.contracts_per_unit
    return -(-qty * im_unit // cpu), -(-qty * mm_unit // cpu)


def position_margin(spec: InstrumentSpec, size: int, mark: int, index: int,
                    leverage_ppm: int = 0) -> tuple[int, int]:
    """Return (initial, maintenance) margin of any position."""
    if size == 0:
        return 0, 0
    if spec.is_option:
        if size > 0:
            # Deribit: a long option's IM and MM are its value, so that value backs nothing else.
            value = size * mark // spec.contracts_per_unit
            return value, value
        return option_seller_margin(spec, size, mark, index)
    return linear_margin(spec, size, mark, leverage_ppm)


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
