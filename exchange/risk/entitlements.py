"""Who may trade what, and how much: per-user limits supplied by the composition root.

The exchange does not know KYC tiers or jurisdictions (custody does). The
application passes a `TradingLimitsProvider` (strongroom.wiring builds one
from the user's KYC tier and jurisdiction rules); the API asks it for the
caller's `TradingLimits` before it takes the venue lock, then checks the
order against the venue's state under the lock with `entitlement_refusal`
(pure), before the pre-trade margin check. A refused order changes nothing
and is never journaled, so replaying the journal does not depend on limits
that may have changed since.

Exposure counts every order already live: a user's worst-case gross
notional is, per instrument and margin account, the larger of the position
if every open buy filled and the position if every open sell filled,
valued at the mark (options at their underlying's index), plus the new
order. Two orders checked one after the other under the lock therefore
cannot jointly pass a cap neither would pass alone. Leverage is that
exposure over the user's equity (cross and isolated accounts together).
Orders that can only shrink a position are never refused here: a user
whose limits fell must still be able to close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from exchange.engine.messages import NewOrder
from exchange.instruments import PPM, InstrumentSpec
from exchange.risk.clearing import Account, Clearinghouse, isolated_account
from exchange.risk.codes import RiskCode

# Instrument kinds map to the products a jurisdiction names (spot is the custody side's).
PRODUCT_OF_KIND: dict[str, str] = {"perpetual": "perpetual", "future": "future", "option": "option"}


@dataclass(frozen=True, slots=True)
class TradingLimits:
    """One user's limits. ``refusal`` set: the user may not open positions at all (why).

    ``max_notional``: cap on worst-case gross notional in the quote asset's
    minor units (None: no cap). ``max_leverage``: cap on that exposure over
    equity (None: the venue's margin only). ``products``: instrument kinds
    the user may trade (None: all). ``basis`` names where the limits come
    from in refusal messages (e.g. "KYC tier 1, jurisdiction DE").
    """

    basis: str
    max_leverage: int | None = None
    max_notional: int | None = None
    products: frozenset[str] | None = None
    refusal: str | None = None
    product_refusals: tuple[tuple[str, str], ...] = ()  # (product, why) for products not allowed


class TradingLimitsProvider(Protocol):
    """Supplies a user's limits (read fresh per order: a tier change applies to the next one)."""

    def trading_limits(self, username: str) -> TradingLimits:
        """Return ``username``'s current limits."""
        ...


def _accounts(ch: Clearinghouse, username: str) -> list[Account]:
    found = []
    acct = ch.accounts.get(username)
    if acct is not None:
        found.append(acct)
    for symbol in ch.specs:
        iso = ch.accounts.get(isolated_account(username, symbol))
        if iso is not None:
            found.append(iso)
    return found


def _unit_price(ch: Clearinghouse, spec: InstrumentSpec) -> int | None:
    if spec.is_option:
        return ch.index_of.get(spec.underlying)
    return ch.marks.get(spec.symbol)


def exposure(ch: Clearinghouse, username: str,
             extra: tuple[str, str, str, int] | None = None) -> tuple[int, int]:
    """Return (worst-case gross notional, equity) of ``username`` in quote minor units.

    ``extra`` = (account, symbol, side, qty): an order to count as if it were live.
    """
    gross = equity = 0
    seen_extra = False
    for acct in _accounts(ch, username):
        equity += ch.valuation(acct)[0]
        for symbol, pos in acct.positions.items():
            buy, sell = pos.open_buy, pos.open_sell
            if extra is not None and extra[0] == acct.id and extra[1] == symbol:
                seen_extra = True
                buy, sell = (buy + extra[3], sell) if extra[2] == "buy" else (buy, sell + extra[3])
            worst = max(abs(pos.size + buy), abs(pos.size - sell))
            gross += _notional(ch, symbol, worst)
    if extra is not None and not seen_extra:
        gross += _notional(ch, extra[1], extra[3])
    return gross, equity


def _notional(ch: Clearinghouse, symbol: str, qty: int) -> int:
    spec = ch.specs.get(symbol)
    if spec is None or qty == 0:
        return 0
    price = _unit_price(ch, spec)
    return 0 if price is None else spec.notional(qty, price)


def _reduces(ch: Clearinghouse, account: str, symbol: str, side: str, qty: int, reduce_only: bool) -> bool:
    if reduce_only:
        return True
    acct = ch.accounts.get(account)
    pos = None if acct is None else acct.positions.get(symbol)
    if pos is None:
        return False
    closable = max(0, -pos.size - pos.open_buy) if side == "buy" else max(0, pos.size - pos.open_sell)
    return qty <= closable


def entitlement_refusal(ch: Clearinghouse, username: str, symbol: str, account: str, side: str, qty: int,
                        reduce_only: bool, limits: TradingLimits) -> tuple[RiskCode, str]:
    """Return (code, why) if ``username`` may not add this order, else (OK, "").

    ``account`` is the margin account the order trades in (the user's cross
    account or an isolated one); ``qty`` the contracts it adds.
    """
    spec = ch.specs.get(symbol)
    if (spec is None or qty <= 0 or (account not in ch.accounts and username not in ch.accounts)
            or _reduces(ch, account, symbol, side, qty, reduce_only)):
        return RiskCode.OK, ""  # unknown instruments and accounts without collateral: the margin check
    if limits.refusal is not None:
        return RiskCode.TRADING_NOT_PERMITTED, limits.refusal
    product = PRODUCT_OF_KIND.get(spec.kind, spec.kind)
    if limits.products is not None and product not in limits.products:
        why = dict(limits.product_refusals).get(product) or f"{limits.basis} may not trade {product} products"
        return RiskCode.PRODUCT_NOT_PERMITTED, why
    max_leverage = limits.max_leverage
    venue_top = PPM // spec.tiers[0].im_ppm if spec.tiers and not spec.is_option else None
    if max_leverage is not None and venue_top is not None and max_leverage >= venue_top:
        max_leverage = None  # no tighter than the venue's own initial margin, which the margin check holds
    if limits.max_notional is None and max_leverage is None:
        return RiskCode.OK, ""
    gross, equity = exposure(ch, username, (account, symbol, side, qty))
    if limits.max_notional is not None and gross > limits.max_notional:
        return RiskCode.NOTIONAL_CAP_EXCEEDED, (
            f"order would take worst-case position notional to {gross}, over the cap of "
            f"{limits.max_notional} for {limits.basis} (open orders count)")
    if max_leverage is not None and gross > max_leverage * max(equity, 0):
        return RiskCode.LEVERAGE_CAP_EXCEEDED, (
            f"order would take leverage to {gross} notional on {max(equity, 0)} equity, over "
            f"{max_leverage}x for {limits.basis} (open orders count)")
    return RiskCode.OK, ""


def order_refusal(ch: Clearinghouse, username: str, symbol: str, cmd: NewOrder,
                  limits: TradingLimits) -> tuple[RiskCode, str]:
    """`entitlement_refusal` for a new order of ``username`` (cmd.account: cross or isolated)."""
    return entitlement_refusal(ch, username, symbol, cmd.account, cmd.side, cmd.qty, cmd.reduce_only, limits)


def amend_refusal(ch: Clearinghouse, username: str, symbol: str, order_id: str, new_qty: int | None,
                  limits: TradingLimits) -> tuple[RiskCode, str]:
    """Check an amend that raises an order's open quantity like a new order of the difference."""
    res = ch.orders.get((symbol, order_id))
    if res is None or new_qty is None or new_qty <= res.qty or res.reduce_only:
        return RiskCode.OK, ""
    side = "buy" if res.side > 0 else "sell"
    return entitlement_refusal(ch, username, symbol, res.account, side, new_qty - res.qty, False, limits)
