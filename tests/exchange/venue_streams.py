"""A seeded stream of venue command batches (durability tests and the crash worker).

Plain module, no test-package imports: the SIGKILL worker runs it as a script.
A batch is what one ``ExchangeService.command()`` block does; ``apply_batch``
runs it on a venue.
"""

from __future__ import annotations

import random
from typing import Any

from exchange.engine.messages import Amend, NewOrder

BTC = 60_000_000_000
USDC = 1_000_000
NOW = 1_767_225_600_000
SOURCES = ("coinbase", "kraken", "bitstamp")
ACCOUNTS = ("a", "b", "c", "d", "e", "f")
SYMBOLS = ("BTC-PERP", "BTC-27MAR26", "BTC-27MAR26-60000-C", "ETH-PERP")
TICK = {"BTC-PERP": 100_000, "BTC-27MAR26": 100_000, "BTC-27MAR26-60000-C": 100_000,
        "ETH-PERP": 10_000}
STEP = {"BTC-PERP": 500, "BTC-27MAR26": 500, "BTC-27MAR26-60000-C": 10, "ETH-PERP": 100}

Op = tuple[Any, ...]


def opening_batches() -> list[list[Op]]:
    """Fund the accounts and the insurance fund, publish the first prices."""
    batches: list[list[Op]] = [[("insurance", 5_000 * USDC)]]
    batches += [[("deposit", a, 20_000 * USDC)] for a in ACCOUNTS]
    batches.append([("prices", "ETH", 3_000 * USDC, NOW), ("prices", "BTC", BTC, NOW)])
    return batches


def random_batches(seed: int, count: int) -> list[list[Op]]:
    """Return the opening batches then ``count`` random ones (orders, cancels, prices, funding)."""
    rng = random.Random(seed)
    batches = opening_batches()
    btc, eth, now = BTC, 3_000 * USDC, NOW
    live: list[tuple[str, str]] = []
    n = 0
    for _ in range(count):
        r = rng.random()
        if r < 0.12:
            btc = max(BTC // 2, btc + rng.randint(-40, 40) * 30 * USDC)
            eth = max(1_500 * USDC, eth + rng.randint(-20, 20) * USDC)
            now += rng.randint(1, 90) * 60_000
            batches.append([("prices", "ETH", eth, now), ("prices", "BTC", btc, now), ("advance", now)])
            continue
        batch: list[Op] = []
        for _ in range(rng.randint(1, 3)):
            k = rng.random()
            account = rng.choice(ACCOUNTS)
            if k < 0.15 and live:
                symbol, oid = live.pop(rng.randrange(len(live)))
                batch.append(("cancel", symbol, oid))
            elif k < 0.22 and live:
                symbol, oid = rng.choice(live)
                batch.append(("amend", symbol, oid, rng.randint(1, 30)))
            elif k < 0.25:
                batch.append(("withdraw", account, rng.randint(1, 500) * USDC))
            elif k < 0.28:
                batch.append(("deposit", account, rng.randint(1, 2_000) * USDC))
            else:
                n += 1
                symbol = rng.choice(SYMBOLS)
                ref = eth if symbol == "ETH-PERP" else (btc if "-C" not in symbol else 4_000 * USDC)
                tick = TICK[symbol]
                side = rng.choice(("buy", "sell"))
                kind = rng.choice(("GTC", "GTC", "IOC", "market"))
                offset = rng.randint(-20, 20) * STEP[symbol] * tick
                price = (ref // tick) * tick + (offset if side == "sell" else -offset)
                oid = f"o{n}"
                batch.append(("order", account, symbol, oid, side, rng.randint(1, 40), max(tick, price),
                              kind, now))
                if kind == "GTC":
                    live.append((symbol, oid))
        batches.append(batch)
    return batches


def apply_batch(venue: Any, batch: list[Op]) -> None:
    """Run one batch of ops on a venue (through its public, journaled methods)."""
    for op in batch:
        kind = op[0]
        if kind == "insurance":
            venue.seed_insurance(op[1])
        elif kind == "deposit":
            venue.deposit(op[1], op[2])
        elif kind == "withdraw":
            venue.withdraw(op[1], op[2])
        elif kind == "prices":
            _, underlying, price, now = op
            for source in SOURCES:
                venue.quote(underlying, source, price, now)
            venue.tick(underlying, now)
        elif kind == "advance":
            venue.advance(op[1])
        elif kind == "cancel":
            venue.cancel(op[1], op[2], None)
        elif kind == "amend":
            venue.amend(op[1], Amend(op[2], qty=op[3]))
        else:
            _, account, symbol, oid, side, qty, price, kind2, now = op
            market = kind2 == "market"
            venue.place(symbol, NewOrder(id=oid, account=account, side=side, qty=qty,
                                         type="market" if market else "limit",
                                         price=None if market else price,
                                         tif="IOC" if kind2 == "IOC" else "GTC", ts=now * 1_000_000))


def ledger_deposits(index: int, batch: list[Op]) -> list[tuple[str, int, str]]:
    """Return the spot credits (owner, amount, transfer id) batch ``index``'s deposits need first."""
    return [(op[1], op[2], f"spot.{index}.{i}") for i, op in enumerate(batch) if op[0] == "deposit"]
