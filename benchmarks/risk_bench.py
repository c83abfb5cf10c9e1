"""Benchmark the risk layer: liquidation detection on a mark tick, and order entry through risk + engine.

    python benchmarks/risk_bench.py                     # 10k, 100k and 1M positions
    python benchmarks/risk_bench.py --skip-1m           # 10k and 100k only
    python benchmarks/risk_bench.py --orders 500000     # order-entry stream length
    python benchmarks/risk_bench.py --journal /tmp/j    # order entry also through the venue journal
    python benchmarks/risk_bench.py --book-cancels      # also the old shortcut (cancels to the book)

Mark tick: positions are spread over 10 perpetuals, 10 per account (so 100k
positions = 10k accounts). 2 % of accounts run at ~83x leverage, the rest at
~5x; a 3 % drop of one instrument's mark puts the leveraged longs (1 % of
accounts) below maintenance. Timed: ``Clearinghouse.set_mark`` (pop crossed
band edges from the liquidation index, exact check, re-band the healthy)
plus building every liquidation order (bankruptcy-price limit, partial
size). Executing them (cancel, book, ADL) is timed separately.

Order entry: a seeded stream of limit orders around the mark (60 %),
cancels (30 %) and market orders (10 %) from 1,000 funded accounts on one
perpetual, each command through the venue (``Venue.place`` / ``Venue.cancel``:
the pre-trade margin check, the book, the clearing of its fills and the
re-reservation of the accounts whose positions moved); postings drained
every 10,000 commands (the ledger write itself is the shell's, batched, and
not timed here). ``--book-cancels`` also runs the stream the way this script
used to, cancels handed straight to the book and the clearing house (skipping
the venue's checks and its after-fill pass), for comparison only.

Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import exchange.engine.orderbook as orderbook_module
from exchange.engine.messages import Cancel, NewOrder
from exchange.instruments import ExchangeConfig, load_instruments, parse_config
from exchange.risk.clearing import Clearinghouse
from exchange.venue import Venue

BTC = 60_000_000_000
USDC = 1_000_000
INSTRUMENTS = 10
EXECUTE_SAMPLE = 5
POSITION_QTY = 100  # contracts of 0.001 BTC: 6,000 USDC notional per position


def bench_config(instruments: int) -> ExchangeConfig:
    """Return a config with ``instruments`` BTC perpetuals."""
    import tomllib

    from exchange.instruments import DEFAULT_CONFIG

    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    template = dict(data["instrument"][0])
    data["instrument"] = [dict(template, symbol=f"P{i}-PERP") for i in range(instruments)]
    return parse_config(data)


def build_positions(positions: int) -> tuple[Venue, list[str]]:
    """Return a venue whose accounts hold ``positions`` positions, longs and shorts paired."""
    venue = Venue(bench_config(INSTRUMENTS), record_fills=False)
    ch = venue.clearing
    ch.begin()
    for symbol in venue.specs:
        ch.marks[symbol] = BTC
    ch.set_index("BTC", BTC)
    accounts = positions // INSTRUMENTS
    notional = POSITION_QTY * BTC // 1000 * INSTRUMENTS
    names = [f"acct{i}" for i in range(accounts)]
    for i, name in enumerate(names):
        acct = ch.open_account(name)
        # Every 50th pair of accounts is leveraged ~83x, the rest ~5x.
        acct.cash = notional * 12 // 1000 if (i // 2) % 50 == 0 else notional // 5
        ch.external_in += acct.cash
    for symbol in venue.specs:
        for i in range(0, accounts - 1, 2):
            long, short = ch.accounts[names[i]], ch.accounts[names[i + 1]]
            ch.transfer_position(symbol, long, short, POSITION_QTY, BTC)
    ch.postings.clear()
    ch.refresh_bands()
    ch.touched.clear()
    return venue, names


def bench_tick(positions: int) -> None:
    t0 = time.perf_counter()
    venue, _ = build_positions(positions)
    setup_s = time.perf_counter() - t0
    ch = venue.clearing
    gc.collect()
    gc.disable()
    symbol = "P0-PERP"
    new_mark = BTC * 97 // 100
    t0, c0 = time.perf_counter(), time.process_time()
    ch.begin()
    unsafe = ch.set_mark(symbol, new_mark)
    detect_s = time.perf_counter() - t0
    orders = []
    for account_id in unsafe:
        acct = ch.accounts[account_id]
        equity, _, mm = ch.valuation(acct)
        for sym in sorted(s for s, p in acct.positions.items() if p.size):
            orders.append(venue.build_liquidation_order(account_id, sym, equity <= 0, equity, mm))
    total_s = time.perf_counter() - t0
    total_cpu_s = time.process_time() - c0
    gc.enable()
    # Execution is not part of the target: the books are empty here, so every liquidation
    # ends in ADL, whose ranking scans the instrument's holders. Time a sample.
    sample = unsafe[:EXECUTE_SAMPLE]
    t1 = time.perf_counter()
    for account_id in sample:
        venue.liquidate(account_id)
    execute_ms = (time.perf_counter() - t1) * 1e3 / max(1, len(sample))
    accounts = positions // INSTRUMENTS
    print(f"  {positions:>9,} positions / {accounts:>7,} accounts: detect {detect_s * 1e3:7.2f} ms, "
          f"detect + emit {len(orders):>6,} liquidation orders for {len(unsafe):>6,} accounts "
          f"{total_s * 1e3:7.2f} ms (cpu {total_cpu_s * 1e3:7.2f} ms); "
          f"executing one (book + ADL) {execute_ms:7.1f} ms; setup {setup_s:5.1f} s")


def bench_orders(count: int, seed: int, journal: Path | None = None, book_cancels: bool = False) -> None:
    venue = Venue(load_instruments(), record_fills=False)
    durable = None
    if journal is not None:
        # Every command journaled (fsync never: the process-crash guarantee), committed per drain.
        from exchange.recovery import DurableVenue, FsyncPolicy

        durable, _ = DurableVenue.open(journal, load_instruments(), policy=FsyncPolicy.NEVER,
                                       record_fills=False, snapshot_every=10**9)
        venue = durable.venue
    ch = venue.clearing
    rng = random.Random(seed)
    accounts = [f"t{i}" for i in range(1_000)]
    for name in accounts:
        venue.deposit(name, 1_000_000 * USDC)
    for source in ("coinbase", "kraken", "bitstamp"):
        venue.quote("BTC", source, BTC, 1)
    venue.tick("BTC", 1)
    ch.drain()
    symbol = "BTC-PERP"
    tick = venue.specs[symbol].tick_size
    commands: list[object] = []
    live: list[str] = []
    for i in range(count):
        r = rng.random()
        account = accounts[rng.randrange(len(accounts))]
        if r < 0.30 and live:
            commands.append(Cancel(live.pop(rng.randrange(len(live))), None))
        elif r < 0.40:
            commands.append(NewOrder(id=f"o{i}", account=account, side=rng.choice(("buy", "sell")),
                                     qty=rng.randint(1, 20), type="market"))
        else:
            side = rng.choice(("buy", "sell"))
            offset = rng.randint(-5, 50) * tick
            price = BTC - offset if side == "buy" else BTC + offset
            commands.append(NewOrder(id=f"o{i}", account=account, side=side,  # type: ignore[arg-type]
                                     qty=rng.randint(1, 20), price=price))
            live.append(f"o{i}")
    book = venue.books[symbol]
    place = venue.place
    cancel = venue.cancel
    rejected = 0
    gc.collect()
    gc.disable()
    t0, c0 = time.perf_counter(), time.process_time()
    for n, cmd in enumerate(commands):
        if type(cmd) is NewOrder:
            if place(symbol, cmd).code:
                rejected += 1
        elif book_cancels:
            ch.begin()
            book.process(cmd)  # type: ignore[arg-type]
            ch.apply(symbol, book.take_events())
        else:
            cancel(symbol, cmd.id, None)  # type: ignore[attr-defined]
        if n % 10_000 == 9_999:
            venue.drain()
            if durable is not None:
                durable.commit()
    venue.drain()
    if durable is not None:
        durable.close()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.enable()
    print(f"  {count:,} commands in {elapsed:.2f} s = {count / elapsed:,.0f} commands/s "
          f"(cpu {cpu:.2f} s = {count / cpu:,.0f} commands/s)"
          f"{' journaled' if durable else ''}{' cancels to the book' if book_cancels else ''} "
          f"through risk + engine ({rejected:,} risk rejections, "
          f"{len(book.orders):,} resting at the end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-1m", action="store_true", help="skip the 1M-position run")
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only-orders", action="store_true", help="skip the mark-tick runs")
    parser.add_argument("--book-cancels", action="store_true",
                        help="also run order entry with cancels sent straight to the book (old shortcut)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="also run order entry through a venue journal in this (new) directory")
    args = parser.parse_args()
    compiled = not str(orderbook_module.__file__).endswith(".py")
    print(f"engine core: {'compiled (mypyc)' if compiled else 'pure Python'}; "
          f"clearing house: pure Python ({Clearinghouse.__module__})")
    if not args.only_orders:
        print("mark tick, 1 % of accounts to liquidate:")
        for positions in (10_000, 100_000) + (() if args.skip_1m else (1_000_000,)):
            bench_tick(positions)
    print("order entry with pre-trade margin check:")
    bench_orders(args.orders, args.seed)
    if args.book_cancels:
        bench_orders(args.orders, args.seed, book_cancels=True)
    if args.journal is not None:
        bench_orders(args.orders, args.seed, args.journal)


if __name__ == "__main__":
    main()
