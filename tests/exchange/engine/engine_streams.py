"""Random command streams shared by the property and differential tests."""

import random

from hypothesis import strategies as st

from exchange.engine.instrument import Instrument
from exchange.engine.messages import (
    Amend,
    Cancel,
    CancelAll,
    Command,
    NewOrder,
    PriceUpdate,
    SetReference,
)

# Tick 2 and lot 1 with min 1 / max 20 so bad_tick and bad_qty happen; a
# 3% band around ~1000 so outside_band and market protection happen.
INSTRUMENT = Instrument(
    symbol="TEST", tick_size=2, lot_size=1, min_qty=1, max_qty=20, band_bps=300,
    reference_price=1000,
)
ACCOUNTS = ("a", "b", "c")
IDS = tuple(f"o{i}" for i in range(16))
TIFS = ("GTC", "GTC", "GTC", "IOC", "FOK", "POST_ONLY")
STPS = (None, None, "cancel_taker", "cancel_maker", "cancel_both")


def _price(rng: random.Random, lo: int, hi: int) -> int:
    """Mostly on-tick prices, sometimes off-tick ones."""
    if rng.random() < 0.1:
        return rng.randrange(lo, hi + 1)
    return rng.randrange(lo, hi + 1, 2)


def random_command(rng: random.Random, recent: list[str] | None = None) -> Command:
    """Draw one command from a mix weighted towards limit orders.

    Cancels and amends mostly target ids from `recent` (ids of earlier new
    orders) so they hit live orders.
    """
    r = rng.random()
    oid = rng.choice(IDS)
    if r >= 0.57 and recent and rng.random() < 0.8:
        oid = rng.choice(recent[-8:])
    if r < 0.45:
        return NewOrder(
            oid, rng.choice(ACCOUNTS), rng.choice(("buy", "sell")), rng.randint(0, 22),
            type="limit", price=_price(rng, 960, 1040), tif=rng.choice(TIFS),
            stp=rng.choice(STPS),
        )
    if r < 0.52:
        return NewOrder(
            oid, rng.choice(ACCOUNTS), rng.choice(("buy", "sell")), rng.randint(1, 25),
            type="market", tif=rng.choice(("GTC", "IOC", "FOK")), stp=rng.choice(STPS),
        )
    if r < 0.57:
        is_market = rng.random() < 0.5
        return NewOrder(
            oid, rng.choice(ACCOUNTS), rng.choice(("buy", "sell")), rng.randint(1, 10),
            type="stop_market" if is_market else "stop_limit",
            price=None if is_market else rng.randrange(970, 1031, 2),
            tif=rng.choice(("GTC", "IOC", "FOK")), stp=rng.choice(STPS),
            trigger_price=rng.randrange(970, 1031, 2), trigger=rng.choice(("last", "mark")),
        )
    if r < 0.72:
        return Cancel(oid, account=rng.choice((None, None, *ACCOUNTS)))
    if r < 0.85:
        qty = rng.choice((None, rng.randint(0, 15)))
        price = rng.choice((None, _price(rng, 970, 1030)))
        return Amend(oid, qty=qty, price=price)
    if r < 0.88:
        return CancelAll(rng.choice(ACCOUNTS))
    if r < 0.97:
        return PriceUpdate(rng.choice(("last", "mark")), rng.randrange(970, 1031, 2))
    return SetReference(rng.randrange(980, 1021, 2))


def random_stream(seed: int, length: int) -> list[Command]:
    """Return a reproducible stream of `length` commands."""
    rng = random.Random(seed)
    recent: list[str] = []
    out: list[Command] = []
    for _ in range(length):
        cmd = random_command(rng, recent)
        if isinstance(cmd, NewOrder):
            recent.append(cmd.id)
        out.append(cmd)
    return out


commands = st.builds(
    lambda seed: random_command(random.Random(seed)), st.integers(0, 2**32)
)
streams = st.lists(commands, min_size=1, max_size=60)
