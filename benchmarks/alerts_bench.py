"""Benchmark alert evaluation (strongroom/console/alerts.py): messages per second against many rules.

    python benchmarks/alerts_bench.py                       # 1,000 users x 5 rules, 50k messages
    python benchmarks/alerts_bench.py --users 5000 --messages 200000

The evaluator runs on the alert job's thread, never the engine's: the engine only appends each
read-model batch to the alert service's bounded queue. This measures how many stream messages
(a seeded mix: 40 % mark, 40 % trades, 20 % fills of random users) one thread evaluates per
second against ``--users`` x 5 rules (price cross on mark and on last, fill, funding,
withdrawal), and how many alerts fire. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import random
import time

from strongroom.console.alerts import AlertEvaluator, RateLimiter, Rule, parse_rule

USDC = 1_000_000


def rules(users: int, rng: random.Random) -> list[Rule]:
    out = []
    for u in range(users):
        name = f"user{u}"
        for body in ({"kind": "price_cross", "symbol": "BTC-PERP", "source": "mark",
                      "direction": rng.choice(["above", "below"]), "price": str(rng.randint(59_000, 61_000))},
                     {"kind": "price_cross", "symbol": "BTC-PERP", "source": "last", "direction": "above",
                      "price": str(rng.randint(59_000, 61_000))},
                     {"kind": "fill"}, {"kind": "funding"}, {"kind": "withdrawal"}):
            kind, params = parse_rule(body)
            out.append(Rule(len(out) + 1, name, kind, params))
    return out


def messages(n: int, users: int, rng: random.Random) -> list[tuple[str, str | None, dict[str, object]]]:
    out: list[tuple[str, str | None, dict[str, object]]] = []
    price = 60_000 * USDC
    for _ in range(n):
        price += rng.randint(-20, 20) * USDC
        r = rng.random()
        if r < 0.4:
            out.append(("mark", None, {"symbol": "BTC-PERP", "mark": price, "index": price}))
        elif r < 0.8:
            out.append(("trades", None, {"symbol": "BTC-PERP", "price": price, "qty": 1}))
        else:
            out.append(("fills", f"user{rng.randrange(users)}", {"symbol": "BTC-PERP", "price": price,
                                                                 "qty": 1, "side": "buy"}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100, help="messages per read-model batch")
    args = parser.parse_args()
    rng = random.Random(20261202)
    ev = AlertEvaluator(RateLimiter(limit=10**9))
    ev.load(rules(args.users, rng), {f"user{u}": frozenset({"trader"}) for u in range(args.users)})
    stream = messages(args.messages, args.users, rng)
    fired = 0
    start = time.perf_counter()
    for i in range(0, len(stream), args.batch):
        fired += len(ev.observe(stream[i:i + args.batch], i))
    seconds = time.perf_counter() - start
    print(f"{len(ev.rules)} rules, {len(stream)} messages in {seconds:.2f} s: "
          f"{len(stream) / seconds:,.0f} messages/s, {fired} alerts fired")


if __name__ == "__main__":
    main()
