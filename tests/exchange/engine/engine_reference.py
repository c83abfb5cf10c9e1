"""A slow, obviously-correct reference matcher written independently of the engine.

It keeps plain lists of dicts, sorts them on every use and simulates
fill-or-kill on a deep copy, so it shares no data structures or shortcuts
with `exchange.engine.orderbook`. Events are returned as plain tuples:

    ("accepted", id)            ("trade", maker, taker, price, qty)
    ("cancelled", id, qty, reason)    ("rejected", id, reason)
    ("amended", id, price, qty, priority_kept)
    ("triggered", id)           ("price", kind, price)
"""

import copy
from typing import Any

from exchange.engine.instrument import Instrument
from exchange.engine.messages import (
    Amend,
    Cancel,
    CancelAll,
    Command,
    NewOrder,
    PriceUpdate,
    SetReference,
)

MAX = 2**62


class ReferenceBook:
    def __init__(self, instrument: Instrument) -> None:
        self.ins = instrument
        self.resting: list[dict[str, Any]] = []  # any order; sorted when used
        self.stops: list[dict[str, Any]] = []
        self.prio = 0
        self.oid = 0
        self.ref = instrument.reference_price
        self.last: int | None = None
        self.mark: int | None = None
        self.out: list[tuple[Any, ...]] = []

    # -------------------------------------------------------------- helpers

    def band(self) -> tuple[int, int]:
        if self.ref is None or self.ins.band_bps is None:
            return 1, MAX
        w = self.ref * self.ins.band_bps // 10_000
        return max(1, self.ref - w), self.ref + w

    def side_orders(self, side: str) -> list[dict[str, Any]]:
        mine = [o for o in self.resting if o["side"] == side]
        if side == "buy":
            return sorted(mine, key=lambda o: (-o["price"], o["prio"]))
        return sorted(mine, key=lambda o: (o["price"], o["prio"]))

    def crosses(self, taker_side: str, limit: int | None, maker_price: int) -> bool:
        if limit is None:
            return True
        return maker_price <= limit if taker_side == "buy" else maker_price >= limit

    def protection(self, side: str) -> int | None:
        if self.ins.band_bps is None:
            return None
        ref = self.ref
        if ref is None:
            opp = self.side_orders("sell" if side == "buy" else "buy")
            if not opp:
                return None
            ref = opp[0]["price"]
        w = ref * self.ins.band_bps // 10_000
        return ref + w if side == "buy" else ref - w

    def match(
        self, tid: str, account: str, side: str, limit: int | None, qty: int, stp: str | None
    ) -> tuple[int, bool]:
        """Trade against the book; return (remaining, halted_by_stp)."""
        opp_side = "sell" if side == "buy" else "buy"
        remaining = qty
        last_px = None
        halted = False
        for maker in self.side_orders(opp_side):
            if remaining == 0 or not self.crosses(side, limit, maker["price"]):
                break
            if stp is not None and maker["account"] == account:
                if stp in ("cancel_maker", "cancel_both"):
                    self.resting.remove(maker)
                    self.out.append(("cancelled", maker["id"], maker["qty"], "stp"))
                if stp in ("cancel_taker", "cancel_both"):
                    halted = True
                    break
                continue
            fill = min(remaining, maker["qty"])
            self.out.append(("trade", maker["id"], tid, maker["price"], fill))
            last_px = maker["price"]
            maker["qty"] -= fill
            remaining -= fill
            if maker["qty"] == 0:
                self.resting.remove(maker)
        if last_px is not None:
            self.ref = last_px
        return remaining, halted

    def would_fill_completely(
        self, tid: str, account: str, side: str, limit: int | None, qty: int, stp: str | None
    ) -> bool:
        trial = copy.deepcopy(self)
        trial.out = []
        remaining, _ = trial.match(tid, account, side, limit, qty, stp)
        return remaining == 0

    def live(self, oid: str) -> bool:
        return any(o["id"] == oid for o in self.resting) or any(s["id"] == oid for s in self.stops)

    # ------------------------------------------------------------- commands

    def process(self, c: Command) -> list[tuple[Any, ...]]:
        self.out = []
        if isinstance(c, NewOrder):
            self.new(c)
        elif isinstance(c, Cancel):
            self.cancel(c)
        elif isinstance(c, Amend):
            self.amend(c)
        elif isinstance(c, CancelAll):
            self.cancel_all(c)
        elif isinstance(c, PriceUpdate):
            self.price(c)
        elif isinstance(c, SetReference):
            self.ref = c.price
            self.out.append(("price", "reference", c.price))
        else:
            raise AssertionError(f"reference does not model {c!r}")
        return self.out

    def static_error(self, c: NewOrder) -> str | None:
        ins = self.ins
        if self.live(c.id):
            return "duplicate_order_id"
        if not c.id or len(c.id) > 64:
            return "bad_id"
        if c.qty <= 0 or c.qty > MAX:
            return "bad_qty"
        if c.qty % ins.lot_size:
            return "bad_lot"
        if not ins.min_qty <= c.qty <= ins.max_qty:
            return "bad_qty"
        if c.type in ("limit", "stop_limit"):
            if c.price is None or c.price <= 0:
                return "bad_price"
            if c.price % ins.tick_size:
                return "bad_tick"
            lo, hi = self.band()
            if c.type == "limit" and not lo <= c.price <= hi:
                return "outside_band"
        elif c.price is not None:
            return "bad_price"
        elif c.tif == "POST_ONLY":
            return "bad_order_type"
        if c.type in ("limit", "market"):
            return "bad_order_type" if c.trigger_price is not None else None
        tp = c.trigger_price
        if tp is None or tp <= 0:
            return "bad_trigger"
        if tp % ins.tick_size:
            return "bad_tick"
        cur = self.last if c.trigger == "last" else self.mark
        if cur is not None and (tp <= cur if c.side == "buy" else tp >= cur):
            return "bad_trigger"
        if c.reduce_only:
            return "reduce_only_unavailable"
        return None

    def book_error(
        self, account: str, side: str, limit: int | None, qty: int, tif: str, stp: str | None
    ) -> str | None:
        opp = self.side_orders("sell" if side == "buy" else "buy")
        if tif == "POST_ONLY":
            assert limit is not None
            if opp and self.crosses(side, limit, opp[0]["price"]):
                return "post_only_would_take"
        if tif == "FOK" and not self.would_fill_completely("?", account, side, limit, qty, stp):
            return "fok_unfillable"
        return None

    def new(self, c: NewOrder) -> None:
        err = self.static_error(c)
        if err is None and c.reduce_only:
            err = "reduce_only_unavailable"
        if err is not None:
            self.out.append(("rejected", c.id, err))
            return
        if c.type in ("stop_limit", "stop_market"):
            self.oid += 1
            self.stops.append(
                {"oid": self.oid, "id": c.id, "account": c.account, "side": c.side, "qty": c.qty,
                 "type": c.type, "price": c.price, "tif": c.tif, "stp": c.stp,
                 "trigger": c.trigger, "trigger_price": c.trigger_price}
            )
            self.out.append(("accepted", c.id))
            return
        limit = c.price if c.type == "limit" else self.protection(c.side)
        err = self.book_error(c.account, c.side, limit, c.qty, c.tif, c.stp)
        if err is not None:
            self.out.append(("rejected", c.id, err))
            return
        self.oid += 1
        self.out.append(("accepted", c.id))
        self.execute(self.oid, c.id, c.account, c.side, c.type == "market", limit, c.qty, c.tif,
                     c.stp)

    def execute(
        self, oid: int, id: str, account: str, side: str, is_market: bool, limit: int | None,
        qty: int, tif: str, stp: str | None,
    ) -> None:
        remaining, halted = self.match(id, account, side, limit, qty, stp)
        if remaining == 0:
            return
        if halted:
            self.out.append(("cancelled", id, remaining, "stp"))
        elif is_market:
            opp = self.side_orders("sell" if side == "buy" else "buy")
            reason = "market_protection" if opp else "market_no_liquidity"
            self.out.append(("cancelled", id, remaining, reason))
        elif tif in ("IOC", "FOK"):
            self.out.append(("cancelled", id, remaining, tif.lower()))
        else:
            self.rest(oid, id, account, side, limit, remaining, tif == "POST_ONLY", stp)

    def rest(
        self, oid: int, id: str, account: str, side: str, price: int | None, qty: int,
        post_only: bool, stp: str | None,
    ) -> None:
        self.prio += 1
        self.resting.append(
            {"oid": oid, "id": id, "account": account, "side": side, "price": price, "qty": qty,
             "prio": self.prio, "post_only": post_only, "stp": stp}
        )

    def find(self, oid: str, account: str | None) -> dict[str, Any] | None:
        for o in self.resting:
            if o["id"] == oid and (account is None or account == o["account"]):
                return o
        return None

    def cancel(self, c: Cancel) -> None:
        o = self.find(c.id, c.account)
        if o is not None:
            self.resting.remove(o)
            self.out.append(("cancelled", o["id"], o["qty"], "user"))
            return
        for s in self.stops:
            if s["id"] == c.id and (c.account is None or c.account == s["account"]):
                self.stops.remove(s)
                self.out.append(("cancelled", s["id"], s["qty"], "user"))
                return
        self.out.append(("rejected", c.id, "unknown_order"))

    def cancel_all(self, c: CancelAll) -> None:
        for o in sorted((o for o in self.resting if o["account"] == c.account),
                        key=lambda o: o["oid"]):
            self.resting.remove(o)
            self.out.append(("cancelled", o["id"], o["qty"], "cancel_all"))
        for s in sorted((s for s in self.stops if s["account"] == c.account),
                        key=lambda s: s["oid"]):
            self.stops.remove(s)
            self.out.append(("cancelled", s["id"], s["qty"], "cancel_all"))

    def amend_error(self, c: Amend, o: dict[str, Any], qty: int, price: int) -> str | None:
        ins = self.ins
        if c.qty is None and c.price is None:
            return "invalid_command"
        if qty <= 0 or qty > MAX:
            return "bad_qty"
        if qty % ins.lot_size:
            return "bad_lot"
        if not ins.min_qty <= qty <= ins.max_qty:
            return "bad_qty"
        if price == o["price"]:
            return None
        if price <= 0:
            return "bad_price"
        if price % ins.tick_size:
            return "bad_tick"
        lo, hi = self.band()
        if not lo <= price <= hi:
            return "outside_band"
        if o["post_only"]:
            opp = self.side_orders("sell" if o["side"] == "buy" else "buy")
            if opp and self.crosses(o["side"], price, opp[0]["price"]):
                return "post_only_would_take"
        return None

    def amend(self, c: Amend) -> None:
        o = self.find(c.id, c.account)
        if o is None:
            stop = any(
                s["id"] == c.id and (c.account is None or c.account == s["account"])
                for s in self.stops
            )
            self.out.append(("rejected", c.id, "not_amendable" if stop else "unknown_order"))
            return
        qty = o["qty"] if c.qty is None else c.qty
        price = o["price"] if c.price is None else c.price
        err = self.amend_error(c, o, qty, price)
        if err is not None:
            self.out.append(("rejected", c.id, err))
            return
        if price == o["price"] and qty <= o["qty"]:
            o["qty"] = qty
            self.out.append(("amended", o["id"], price, qty, True))
            return
        self.resting.remove(o)
        self.out.append(("amended", o["id"], price, qty, False))
        remaining, halted = self.match(o["id"], o["account"], o["side"], price, qty, o["stp"])
        if remaining == 0:
            return
        if halted:
            self.out.append(("cancelled", o["id"], remaining, "stp"))
            return
        self.rest(o["oid"], o["id"], o["account"], o["side"], price, remaining, o["post_only"],
                  o["stp"])

    def price(self, c: PriceUpdate) -> None:
        if c.kind == "last":
            self.last = c.price
        else:
            self.mark = c.price
        self.out.append(("price", c.kind, c.price))
        fired = sorted(
            (
                s
                for s in self.stops
                if s["trigger"] == c.kind
                and (c.price >= s["trigger_price"] if s["side"] == "buy"
                     else c.price <= s["trigger_price"])
            ),
            key=lambda s: s["oid"],
        )
        for s in fired:
            self.stops.remove(s)
            self.out.append(("triggered", s["id"]))
            is_market = s["type"] == "stop_market"
            limit = self.protection(s["side"]) if is_market else s["price"]
            err = None
            lo, hi = self.band()
            if not is_market and not lo <= limit <= hi:
                err = "outside_band"
            else:
                err = self.book_error(s["account"], s["side"], limit, s["qty"], s["tif"], s["stp"])
            if err is not None:
                self.out.append(("cancelled", s["id"], s["qty"], err))
                continue
            self.execute(s["oid"], s["id"], s["account"], s["side"], is_market, limit, s["qty"],
                         s["tif"], s["stp"])

    def final_book(self) -> list[tuple[str, str, int, int]]:
        return [
            (o["id"], o["side"], o["price"], o["qty"])
            for side in ("buy", "sell")
            for o in self.side_orders(side)
        ]
