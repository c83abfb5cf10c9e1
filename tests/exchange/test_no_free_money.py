"""Property: no free money (issue 14). Random colluding and honest accounts, any price in the band.

Colluders trade with each other (cross and isolated) at random prices inside
the price band, honest accounts trade and rest orders, the mark walks (small
steps, or gaps) with liquidations and funding. After every step:

* the books balance: the sum of every user's equity change equals the money
  that came in minus what the fees, insurance fund and bad-debt accounts took
  (up to one unit of rounding per open position);
* nobody ends negative: every account's equity is >= 0 after each step, and a
  flat account's collateral is >= 0 (losses go to the fund, ADL, or an
  explicit write-off, each recorded once);
* trading only between colluders never raises their combined equity (valued
  at the mark, fees included; trading with others at stale quotes may), and,
  with marks moving less than the maintenance buffer, nobody else ever pays
  for them: no insurance used, no ADL charge.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine.messages import CancelAll, NewOrder, Trade
from exchange.risk.events import BadDebt, Deleveraged, InsuranceUsed
from exchange.venue import Venue

from .helpers import BTC, NOW, USDC, ReplicaLedger, agree, move, venue

PERP, FUT = "BTC-PERP", "BTC-27MAR26"
COLLUDERS = ["c1", "c2", "c1:iso:BTC-PERP", "c2:iso:BTC-PERP"]
HONEST = ["h1", "h2", "h3"]

collusions = st.tuples(st.just("collude"), st.sampled_from(COLLUDERS), st.sampled_from(COLLUDERS),
                       st.sampled_from([PERP, FUT]), st.sampled_from(["buy", "sell"]),
                       st.integers(1, 3_000), st.integers(-99, 99))
honest = st.tuples(st.just("honest"), st.sampled_from(HONEST), st.sampled_from([PERP, FUT]),
                   st.sampled_from(["buy", "sell"]), st.integers(1, 2_000), st.integers(-99, 99),
                   st.sampled_from(["GTC", "IOC", "market"]))
small_moves = st.tuples(st.just("move"), st.integers(-4, 4))  # per mille of the index
gaps = st.tuples(st.just("move"), st.integers(-150, 150))
funds = st.tuples(st.just("fund"))
cancels = st.tuples(st.just("cancel"), st.sampled_from(COLLUDERS + HONEST))


def _colluder(account: str) -> bool:
    return account.split(":")[0] in ("c1", "c2")


def _users(v: Venue) -> list[str]:
    return sorted(a for a in v.clearing.accounts)


def _equity(v: Venue, account: str) -> int:
    ch = v.clearing
    return ch.valuation(ch.accounts[account])[0] if account in ch.accounts else 0


def _platform(v: Venue) -> int:
    ch = v.clearing
    return ch.fees + ch.insurance + ch.bad_debt - ch.external_in


def _positions(v: Venue) -> int:
    return sum(1 for a in v.clearing.accounts.values() for p in a.positions.values() if p.size)


def _price(v: Venue, symbol: str, per_mille: int) -> int:
    spec = v.specs[symbol]
    ref = v.books[symbol].reference_price or v.clearing.marks[symbol]
    return spec.round_to_tick(ref + ref * per_mille // 1000)


def _step(v: Venue, op: tuple, i: int, state: dict[str, int]) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "collude":
        _, maker, taker, symbol, side, qty, per_mille = op
        price = _price(v, symbol, per_mille)
        other = "sell" if side == "buy" else "buy"
        v.place(symbol, NewOrder(id=f"m{i}", account=maker, side=other, qty=qty, price=price))
        v.place(symbol, NewOrder(id=f"t{i}", account=taker, side=side, qty=qty, price=price, tif="IOC"))
        v._run(symbol, CancelAll(maker))
    elif kind == "honest":
        _, account, symbol, side, qty, per_mille, tif = op
        if tif == "market":
            v.place(symbol, NewOrder(id=f"o{i}", account=account, side=side, qty=qty, type="market"))
        else:
            v.place(symbol, NewOrder(id=f"o{i}", account=account, side=side, qty=qty,
                                     price=_price(v, symbol, per_mille), tif=tif))
    elif kind == "move":
        state["px"] = max(BTC // 4, state["px"] + state["px"] * op[1] // 1000)
        state["t"] += 5_000
        move(v, "BTC", state["px"], state["t"])
    elif kind == "fund":
        v.fund(PERP, state["t"])
    else:
        for symbol in (PERP, FUT):
            v._run(symbol, CancelAll(op[1]))


def _run(ops: list[tuple], cash: list[int], insurance: int, strict: bool) -> None:  # type: ignore[type-arg]
    accounts = {"c1": cash[0] * USDC, "c2": cash[1] * USDC, "mm": 5_000_000 * USDC}
    accounts |= {h: c * USDC for h, c in zip(HONEST, cash[2:], strict=True)}
    v = venue(insurance=insurance * USDC, accounts=accounts)
    replica = ReplicaLedger()
    # A market maker keeps both books two-sided near the mark, so liquidations find bids.
    for symbol in (PERP, FUT):
        for k in range(1, 6):
            v.place(symbol, NewOrder(id=f"mmb{k}", account="mm", side="buy", qty=500,
                                     price=BTC - k * 30 * USDC))
            v.place(symbol, NewOrder(id=f"mma{k}", account="mm", side="sell", qty=500,
                                     price=BTC + k * 30 * USDC))
    agree(v, replica)
    state = {"px": BTC, "t": NOW}
    bad_debt_reported = 0
    for i, op in enumerate(ops):
        users = _users(v)
        before = {a: _equity(v, a) for a in users}
        platform, positions = _platform(v), _positions(v)
        insurance_before = v.clearing.insurance
        v.engine_events.clear()
        _step(v, op, i, state)
        trades = [e for _, e in v.engine_events if type(e) is Trade]
        events = list(v.clearing.events)
        agree(v, replica)
        after = {a: _equity(v, a) for a in _users(v)}
        change = sum(after.values()) - sum(before.values())
        # Money in (deposits) minus what the platform accounts took: fees, fund, write-offs.
        assert abs(change + (_platform(v) - platform)) <= positions + _positions(v) + 1, op
        for account, eq in after.items():
            assert eq >= 0, (account, eq, op)
        bad_debt_reported += sum(e.amount for e in events if type(e) is BadDebt)
        assert bad_debt_reported == -v.clearing.bad_debt  # each shortfall recorded once
        if op[0] == "collude" and all(_colluder(e.maker_account) and _colluder(e.taker_account)
                                      for e in trades):
            pair = [a for a in after if _colluder(a)]
            assert sum(after[a] for a in pair) <= sum(before.get(a, 0) for a in pair), op
        if strict:
            assert not any(type(e) is InsuranceUsed for e in events), op
            assert not any(type(e) is Deleveraged and e.charge for e in events), op
            assert v.clearing.insurance >= insurance_before and v.clearing.bad_debt == 0


CASH = st.lists(st.integers(200, 20_000), min_size=5, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(collusions, collusions, honest, small_moves, funds, cancels),
                    min_size=10, max_size=40), cash=CASH, insurance=st.integers(0, 1_000))
def test_no_free_money_with_marks_inside_the_maintenance_buffer(ops: list[tuple], cash: list[int],  # type: ignore[type-arg]
                                                                insurance: int) -> None:
    _run(ops, cash, insurance, strict=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(collusions, collusions, honest, gaps, funds, cancels),
                    min_size=10, max_size=40), cash=CASH, insurance=st.integers(0, 1_000))
def test_no_free_money_through_gaps_liquidations_and_adl(ops: list[tuple], cash: list[int],  # type: ignore[type-arg]
                                                         insurance: int) -> None:
    _run(ops, cash, insurance, strict=False)
