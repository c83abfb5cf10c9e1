"""Write the standard seeded benchmark stream of engine commands (JSONL).

Mix (by command): ~50% passive limit orders within 50 ticks of mid, qty
1-10; ~30% cancels of live orders; ~15% aggressive limits crossing the
spread; ~5% market orders. One instrument, 100 accounts, no band, no STP.
The generator runs the engine itself to know which orders are still live,
so cancels target live orders.

    python benchmarks/engine_stream.py --out stream.jsonl [--commands 1000000] [--seed 42]
"""

import argparse
import random
import sys
from pathlib import Path

import msgspec

from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, Command, NewOrder
from exchange.engine.orderbook import OrderBook

START_MID = 100_000
PASSIVE_SPREAD_TICKS = 50
ACCOUNTS = [f"acct{i}" for i in range(100)]


def generate(commands: int, seed: int = 42) -> list[Command]:
    """Return the seeded stream of `commands` commands."""
    rng = random.Random(seed)
    book = OrderBook(Instrument(symbol="BENCH"))
    live: list[str] = []
    out: list[Command] = []
    next_id = 0
    for _ in range(commands):
        r = rng.random()
        cmd: Command | None = None
        if 0.50 <= r < 0.80:
            cmd = _pick_cancel(rng, book, live)
        if cmd is None:
            next_id += 1
            oid = f"o{next_id}"
            cmd = _new_order(rng, book, oid, r)
            if cmd.type == "limit":
                live.append(oid)
        book.process(cmd)
        book.events.clear()
        out.append(cmd)
    return out


def _pick_cancel(rng: random.Random, book: OrderBook, live: list[str]) -> Cancel | None:
    while live:
        i = rng.randrange(len(live))
        oid = live[i]
        live[i] = live[-1]
        live.pop()
        if oid in book.orders:
            return Cancel(oid)
    return None


def _new_order(rng: random.Random, book: OrderBook, oid: str, r: float) -> NewOrder:
    bid, ask = book.best_bid(), book.best_ask()
    mid = (bid + ask) // 2 if bid is not None and ask is not None else bid or ask or START_MID
    account = rng.choice(ACCOUNTS)
    qty = rng.randint(1, 10)
    side = "buy" if rng.random() < 0.5 else "sell"
    if r < 0.50 or (0.50 <= r < 0.80):  # passive (also when there was nothing to cancel)
        offset = rng.randint(1, PASSIVE_SPREAD_TICKS)
        if side == "buy":
            price = mid - offset if ask is None else min(mid - offset, ask - 1)
        else:
            price = mid + offset if bid is None else max(mid + offset, bid + 1)
        return NewOrder(oid, account, side, qty, price=price)
    if r < 0.95:  # aggressive limit crossing the spread
        if side == "buy":
            price = (ask if ask is not None else mid) + rng.randint(0, 5)
        else:
            price = (bid if bid is not None else mid) - rng.randint(0, 5)
        return NewOrder(oid, account, side, qty, price=price)
    return NewOrder(oid, account, side, qty, type="market")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    stream = generate(args.commands, args.seed)
    args.out.write_bytes(msgspec.json.Encoder().encode_lines(stream))
    print(f"wrote {len(stream)} commands to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
