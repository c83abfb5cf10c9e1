"""Compliance benchmarks: parsing and loading a sanctions list, screening addresses and names, monitoring.

    python benchmarks/compliance_bench.py [--entries 15000] [--lookups 2000] [--names 200] [--users 200]

A fabricated list of ``--entries`` SDN rows (a real SDN list has about 15-18k
entries and a few hundred digital-currency addresses; here every tenth
entry lists two addresses) is parsed, then loaded into a fresh SQLite
database (a version plus its address rows). Then ``--lookups`` destination
screenings (half listed, half clean) run through `Screening.address_hits`,
``--names`` fuzzy name screenings through `Screening.screen_name`, and the
FATF rule document is evaluated over ``--users`` users of 200 events each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from custody.compliance.screening import Screening
from custody.compliance.sdn import parse_sdn
from custody.db import make_engine, make_session_factory
from policies.monitoring import DEPOSIT, WITHDRAWAL, ActivityEvent, evaluate
from strongroom.migrate import upgrade


def fabricated_list(entries: int) -> str:
    rows = []
    for n in range(1, entries + 1):
        remarks = "FABRICATED."
        if n % 10 == 0:
            remarks = (
                f"Digital Currency Address - XBT bc1qbench{n:032d}; "
                f"alt. Digital Currency Address - ETH 0x{n:040x}; FABRICATED."
            )
        rows.append(
            f'{n},"BENCHNAME{n}, Person{n % 997}","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
            f'-0- ,"{remarks}"'
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=15_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    text = fabricated_list(args.entries)
    started = time.perf_counter()
    parsed = parse_sdn(text)
    print(f"parse: {args.entries} entries in {time.perf_counter() - started:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        screening = Screening(make_session_factory(engine), lambda: 0)
        started = time.perf_counter()
        screening.load(parsed, source="bench", actor="bench")
        print(f"load + re-screen (empty platform): {time.perf_counter() - started:.3f} s")
        sessions = make_session_factory(engine)
        started = time.perf_counter()
        with sessions() as session:
            # Odd lookups name a listed entry (a multiple of ten within the list), even ones a clean one.
            numbers = [
                (i * 10) % args.entries or 10 if i % 2 else i * 10 + 1 for i in range(1, args.lookups + 1)
            ]
            hits = sum(bool(screening.address_hits(session, "BTC", f"bc1qbench{n:032d}")) for n in numbers)
        elapsed = time.perf_counter() - started
        print(
            f"address screening: {args.lookups} lookups ({hits} hits) in {elapsed:.3f} s, "
            f"{elapsed / args.lookups * 1e6:.0f} us each"
        )
        screening.screen_name("warm up the name index")
        started = time.perf_counter()
        for i in range(args.names):
            screening.screen_name(f"Person{i % 997} Benchname{i * 7}")
        elapsed = time.perf_counter() - started
        print(
            f"name screening: {args.names} names against {args.entries} entries in {elapsed:.3f} s, "
            f"{elapsed / args.names * 1e3:.1f} ms each"
        )
        engine.dispose()
    from custody.compliance.monitoring import default_rules

    rules = default_rules()
    histories = [
        [
            ActivityEvent(
                DEPOSIT if j % 2 else WITHDRAWAL,
                1_000_000 + j * 3_600_000,
                990_000 + u,
                counterparty=f"s{j % 13}",
                ref=f"{u}:{j}",
            )
            for j in range(200)
        ]
        for u in range(args.users)
    ]
    started = time.perf_counter()
    for history in histories:
        evaluate(rules, history, 1_000_000 + 200 * 3_600_000)
    elapsed = time.perf_counter() - started
    print(
        f"monitoring: {args.users} users x 200 events in {elapsed:.3f} s, "
        f"{elapsed / args.users * 1e3:.2f} ms per user"
    )


if __name__ == "__main__":
    main()
