"""A position in one instrument: size, cost basis, realised PnL, and the fill arithmetic.

``cost`` is the signed quote value the position was opened at (long
positive), so ``entry price = cost * contracts_per_unit / size`` and the
unrealised PnL at ``mark`` is ``size * mark // cpu - cost``. Keeping the exact
cost instead of a rounded average entry makes the platform identity exact:
the clearing account always holds ``-sum(cost)`` over open futures positions.
"""

from __future__ import annotations


class Position:
    """Size (signed contracts), cost basis and the open-order book-keeping of one account."""

    __slots__ = ("cost", "open_buy", "open_sell", "order_im", "realised", "size", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.size = 0
        self.cost = 0
        self.realised = 0
        self.open_buy = 0
        self.open_sell = 0
        self.order_im = 0

    def idle(self) -> bool:
        """Tell whether nothing is left: no size and no open orders."""
        return self.size == 0 and self.open_buy == 0 and self.open_sell == 0

    def entry_price(self, cpu: int) -> int | None:
        """Return the average entry price (floored), or None when flat."""
        if self.size == 0:
            return None
        return self.cost * cpu // self.size

    def fill(self, qty: int, price: int, cpu: int) -> int:
        """Apply a fill of signed ``qty`` at ``price``; return the realised PnL of the closed part.

        Netting: a fill against the position first closes it (realising PnL
        on the closed part at the exact proportional cost), then any rest
        opens the other way at ``price``.
        """
        assert qty != 0
        size = self.size
        realised = 0
        if size != 0 and (size > 0) != (qty > 0):
            closed = min(abs(qty), abs(size))
            removed = self.cost * closed // abs(size) if closed < abs(size) else self.cost
            sign = 1 if size > 0 else -1
            realised = sign * closed * price // cpu - removed
            self.cost -= removed
            self.size = size = size - sign * closed
            qty += sign * closed
            self.realised += realised
        if qty != 0:
            self.cost += qty * price // cpu
            self.size = size + qty
        return realised
