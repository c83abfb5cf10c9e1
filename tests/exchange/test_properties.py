"""Properties under random order flow and random price paths (pure core, no database).

* collateral is conserved: sum(collateral) + clearing + fees + insurance only
  changes by deposits, so liquidation, ADL, funding and settlement create or
  destroy nothing;
* the ledger (a replica applying the postings) agrees with the clearing house
  after every command: per-account collateral, holds, clearing, fees, insurance;
* funding is zero-sum;
* after every mark tick no account with positions is below maintenance margin
  unless ADL charged it during that very tick (the liquidation index misses nobody).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine.messages import NewOrder
from exchange.risk.events import Deleveraged

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, move, venue

ACCOUNTS = ["a", "b", "c", "d", "e"]
SYMBOLS = ["BTC-PERP", "BTC-27MAR26", "BTC-27MAR26-60000-C"]

orders = st.tuples(
    st.just("order"), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS),
    st.sampled_from(["buy", "sell"]), st.integers(1, 2_000), st.integers(-30, 30),
    st.sampled_from(["GTC", "IOC", "market"]))
trades = st.tuples(
    st.just("trade"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), st.sampled_from(SYMBOLS),
    st.sampled_from(["buy", "sell"]), st.integers(1, 3_000), st.integers(-20, 20))
moves = st.tuples(st.just("move"), st.integers(-800, 600))
funds = st.tuples(st.just("fund"))
cancels = st.tuples(st.just("cancel"), st.sampled_from(ACCOUNTS))
ops = st.lists(st.one_of(trades, orders, moves, funds, cancels), min_size=10, max_size=50)


def _run(v, op, i: int, state: dict[str, int]) -> None:
    kind = op[0]
    if kind == "trade":
        _, maker, taker, symbol, side, qty, offset = op
        spec = v.specs[symbol]
        qty = qty if not spec.is_option else 1 + qty // 100
        mark = v.clearing.marks[symbol]
        price = spec.round_to_tick(mark + offset * mark // 1000)
        other = "sell" if side == "buy" else "buy"
        v.place(symbol, NewOrder(id=f"m{i}", account=maker, side=other, qty=qty, price=price))
        v.place(symbol, NewOrder(id=f"t{i}", account=taker, side=side, qty=qty, price=price, tif="IOC"))
    elif kind == "order":
        _, account, symbol, side, qty, offset, tif = op
        spec = v.specs[symbol]
        mark = v.clearing.marks[symbol]
        price = spec.round_to_tick(mark + offset * mark // 1000)
        if tif == "market":
            cmd = NewOrder(id=f"o{i}", account=account, side=side, qty=qty, type="market")
        else:
            cmd = NewOrder(id=f"o{i}", account=account, side=side, qty=qty, price=price, tif=tif)
        v.place(symbol, cmd)
    elif kind == "move":
        state["px"] = max(BTC // 4, state["px"] + op[1] * USDC * 5)
        state["t"] += 60_000
        move(v, "BTC", state["px"], state["t"])
    elif kind == "fund":
        before = sum(a.cash for a in v.clearing.accounts.values())
        v.fund("BTC-PERP", state["t"])
        # Funding itself is zero-sum; liquidations it triggers are checked by conservation.
        paid = [e for e in v.clearing.events if type(e).__name__ == "FundingPaid"]
        if paid and not any(type(e).__name__ == "LiquidationStarted" for e in v.clearing.events):
            assert sum(a.cash for a in v.clearing.accounts.values()) == before
    else:
        for symbol in SYMBOLS:
            from exchange.engine.messages import CancelAll

            v._run(symbol, CancelAll(op[1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, seed_cash=st.lists(st.integers(300, 20_000), min_size=5, max_size=5),
       insurance=st.integers(0, 2_000))
def test_collateral_conserved_and_ledger_agrees_under_random_paths(
        ops: list[tuple], seed_cash: list[int], insurance: int) -> None:
    v = venue(insurance=insurance * USDC,
              accounts={a: c * USDC for a, c in zip(ACCOUNTS, seed_cash, strict=True)})
    replica = ReplicaLedger()
    agree(v, replica)
    state = {"px": BTC, "t": NOW}
    for i, op in enumerate(ops):
        _run(v, op, i, state)
        charged = {e.counterparty for e in v.clearing.events if type(e) is Deleveraged}
        if op[0] == "move":
            for acct in v.clearing.accounts.values():
                if any(p.size for p in acct.positions.values()) and acct.id not in charged:
                    assert v.clearing.health(acct) >= 0, f"{acct.id} left below maintenance"
        agree(v, replica)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5_000), min_size=2, max_size=8),
       rate=st.integers(-3_000, 3_000).filter(lambda r: r != 0))
def test_funding_is_exactly_zero_sum(sizes: list[int], rate: int) -> None:
    names = [f"u{i}" for i in range(len(sizes))]
    v = venue(accounts={n: 10**12 for n in names} | {"mm": 10**13})
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        side = "buy" if i % 2 else "sell"
        other = "sell" if side == "buy" else "buy"
        v.place("BTC-PERP", NewOrder(id=f"mm{i}", account="mm", side=other, qty=size, price=BTC))
        v.place("BTC-PERP", NewOrder(id=f"u{i}", account=name, side=side, qty=size, price=BTC))
    replica = ReplicaLedger()
    agree(v, replica)
    before = {a.id: a.cash for a in v.clearing.accounts.values()}
    v.clearing.begin()
    total = v.clearing.fund("BTC-PERP", rate, NOW)
    agree(v, replica)
    deltas = {a.id: a.cash - before[a.id] for a in v.clearing.accounts.values()}
    assert sum(deltas.values()) == 0
    assert sum(d for d in deltas.values() if d > 0) == total
