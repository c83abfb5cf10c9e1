"""Instrument specification: the rules one order book enforces."""

import msgspec

# Limits on everything: prices and quantities must fit comfortably in a
# signed 64-bit integer so downstream systems (PostgreSQL BIGINT, Rust/Java
# consumers) can hold them without overflow.
MAX_PRICE = 2**62
MAX_QTY = 2**62
BPS_DENOMINATOR = 10_000


class Instrument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Describe one tradable instrument.

    Prices are integers in the instrument's price unit and must be multiples
    of `tick_size`; quantities are integers in the base unit and must be
    multiples of `lot_size`, between `min_qty` and `max_qty` inclusive.

    Price band: when `band_bps` is set, a limit price must lie within
    `band_bps` basis points of the reference price, i.e.
    `abs(price - ref) * 10_000 <= ref * band_bps`. The reference is the last
    trade price of this book, or the price of the latest `reference`
    command, or `reference_price` initially; with no reference yet, limit
    prices are not band-checked. Market orders never trade beyond the band
    edge (their protection limit); with no reference yet, the band is taken
    around the best opposite price at arrival.
    """

    symbol: str = "REPLAY"
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 1_000_000_000
    band_bps: int | None = None
    reference_price: int | None = None

    def check(self) -> None:
        """Raise ValueError when the specification itself is inconsistent."""
        if not 0 < self.tick_size < MAX_PRICE:
            raise ValueError(f"tick_size was {self.tick_size}, must be in 1..{MAX_PRICE - 1}")
        if not 0 < self.lot_size <= MAX_QTY:
            raise ValueError(f"lot_size was {self.lot_size}, must be in 1..{MAX_QTY}")
        if not 0 < self.min_qty <= self.max_qty <= MAX_QTY:
            raise ValueError(
                f"min_qty={self.min_qty} max_qty={self.max_qty}: need 0 < min_qty <= max_qty"
                f" <= {MAX_QTY}"
            )
        if self.band_bps is not None and not 0 < self.band_bps <= BPS_DENOMINATOR:
            raise ValueError(f"band_bps was {self.band_bps}, must be in 1..{BPS_DENOMINATOR}")
        ref = self.reference_price
        if ref is not None and not 0 < ref < MAX_PRICE:
            raise ValueError(f"reference_price was {ref}, must be in 1..{MAX_PRICE - 1}")
