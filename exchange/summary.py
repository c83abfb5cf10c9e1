"""Read models of the venue for the API: instruments, orders, positions, margin summary."""

from __future__ import annotations

from typing import Any

from exchange.instruments import PPM
from exchange.margin.requirement import (
    maintenance_amounts,
    position_margin,
    position_value,
    tier_index,
)
from exchange.risk.clearing import Account, isolated_parent
from exchange.venue import Venue


def instrument_view(venue: Venue, symbol: str) -> dict[str, Any]:
    """Return an instrument's specification, trading state and prices."""
    spec = venue.specs[symbol]
    book = venue.books[symbol]
    return {
        "symbol": symbol, "kind": spec.kind, "underlying": spec.underlying,
        "quote_asset": spec.quote_asset, "contracts_per_unit": spec.contracts_per_unit,
        "tick_size": spec.tick_size, "lot_size": spec.lot_size, "max_qty": spec.max_qty,
        "band_bps": spec.band_bps, "maker_fee_ppm": spec.maker_fee_ppm,
        "taker_fee_ppm": spec.taker_fee_ppm, "expiry_ms": spec.expiry_ms,
        "option_type": spec.option_type, "strike": spec.strike,
        "implied_vol_ppm": spec.implied_vol_ppm,
        "tiers": [{"max_notional": t.max_notional, "im_ppm": t.im_ppm, "mm_ppm": t.mm_ppm}
                  for t in spec.tiers],
        "trading": venue.clearing.trading[symbol], "mark": venue.clearing.marks.get(symbol),
        "best_bid": book.best_bid(), "best_ask": book.best_ask(),
    }


def _accounts_of(venue: Venue, owner: str) -> list[Account]:
    """Return the owner's cross account and isolated sub-accounts (sorted by id)."""
    return [a for i, a in sorted(venue.clearing.accounts.items())
            if i == owner or isolated_parent(i) == owner]


def order_views(venue: Venue, owner: str) -> list[dict[str, Any]]:
    """Return the owner's live orders in every book."""
    ids = {a.id for a in _accounts_of(venue, owner)}
    out: list[dict[str, Any]] = []
    for symbol, book in sorted(venue.books.items()):
        for o in book.orders.values():
            if o.account in ids:
                out.append({"symbol": symbol, "id": o.id, "side": "buy" if o.is_buy else "sell",
                            "price": o.price, "open_qty": o.qty, "reduce_only": o.reduce_only,
                            "account": o.account, "status": "resting"})
        for s in book.stops.values():
            if s.account in ids:
                out.append({"symbol": symbol, "id": s.id, "side": "buy" if s.is_buy else "sell",
                            "price": s.price, "open_qty": s.qty, "trigger_price": s.trigger_price,
                            "account": s.account, "status": "untriggered"})
    return out


def liquidation_price(venue: Venue, acct: Account, symbol: str) -> int | None:
    """Return the mark of ``symbol`` at which the account reaches maintenance, others fixed.

    Linear positions only (None for options, or when no positive price exists).
    """
    ch = venue.clearing
    spec = ch.specs[symbol]
    pos = acct.positions.get(symbol)
    if pos is None or pos.size == 0 or spec.is_option:
        return None
    equity, _, mm = ch.valuation(acct)
    mark = ch.marks[symbol]
    own_mm = position_margin(spec, pos.size, mark, mark)[1]
    tier = tier_index(spec, abs(pos.size) * mark // spec.contracts_per_unit)
    rate = spec.tiers[tier].mm_ppm
    cum = maintenance_amounts(spec.tiers)[tier]  # MM = notional * rate - cum (docs/margin.md)
    s, c = pos.size, spec.contracts_per_unit
    denominator = s * PPM - abs(s) * rate
    numerator = (mm - own_mm - cum - equity) * c * PPM + s * mark * PPM
    if denominator == 0:
        return None
    price = numerator // denominator
    return price if price > 0 else None


def position_views(venue: Venue, owner: str) -> list[dict[str, Any]]:
    """Return the owner's positions (cross and isolated)."""
    ch = venue.clearing
    out: list[dict[str, Any]] = []
    for acct in _accounts_of(venue, owner):
        for symbol, pos in sorted(acct.positions.items()):
            if pos.size == 0:
                continue
            spec = ch.specs[symbol]
            mark = ch.marks[symbol]
            im, mm = position_margin(spec, pos.size, mark, ch.index_of.get(spec.underlying, mark),
                                     acct.leverage.get(symbol, 0))
            out.append({
                "symbol": symbol, "margin_mode": "cross" if acct.parent is None else "isolated",
                "size": pos.size, "entry_price": pos.entry_price(spec.contracts_per_unit),
                "mark": mark, "unrealised_pnl": position_value(spec, pos.size, pos.cost, mark)
                - (pos.cost if spec.is_option else 0),
                "realised_pnl": pos.realised, "initial_margin": im, "maintenance_margin": mm,
                "liquidation_price": liquidation_price(venue, acct, symbol),
            })
    return out


def account_summary(venue: Venue, owner: str) -> dict[str, Any]:
    """Return the owner's cross-margin summary plus each isolated sub-account's."""
    ch = venue.clearing
    rows = []
    for acct in _accounts_of(venue, owner):
        equity, im, mm = ch.valuation(acct)
        rows.append({
            "account": acct.id, "margin_mode": "cross" if acct.parent is None else "isolated",
            "collateral": acct.cash, "equity": equity, "position_margin": im,
            "order_margin": acct.order_im, "used_margin": im + acct.order_im,
            "free_margin": equity - im - acct.order_im, "maintenance_margin": mm,
            # Margin ratio: maintenance / equity in ppm; 1,000,000 means liquidation.
            "margin_ratio_ppm": mm * PPM // equity if equity > 0 else None,
        })
    if not rows:
        return {"account": owner, "collateral": 0, "equity": 0, "used_margin": 0,
                "free_margin": 0, "maintenance_margin": 0, "margin_ratio_ppm": None, "isolated": []}
    cross = rows[0] if rows[0]["margin_mode"] == "cross" else {"account": owner}
    return {**cross, "isolated": [r for r in rows if r["margin_mode"] == "isolated"]}
