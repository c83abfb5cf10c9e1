"""Alert rules and their evaluation over the event flow (pure: no I/O, time passed in).

A person configures rules (docs/console.md, "Alerts"); `AlertEvaluator.observe` takes the
market-data read model's stream messages (the same ``(channel, account, payload)`` batches
the websocket streams carry, engine integers) and the withdrawal/approval messages, and
returns the alerts that fire. Nothing here reads the database or runs on the order path:
the alert service feeds it from its own thread (strongroom/console/alert_service.py).

Price and margin rules fire once per *crossing*: the evaluator remembers on which side of
the threshold the last observed value was, and fires only when it moves to the rule's
side from the other one (the first observation only sets the side). Every alert of a user
passes a per-user rate limit (`RATE_LIMIT` per `RATE_WINDOW_MS`); what exceeds it is
counted, not delivered.
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from strongroom.console.codes import ConsoleCode, ConsoleError

KINDS: Final = ("price_cross", "margin_ratio", "liquidation_warning", "funding", "fill", "withdrawal",
                "approval")
SOURCES: Final = ("mark", "last")
DIRECTIONS: Final = ("above", "below")
QUOTE_DECIMALS: Final = 6  # prices and amounts in USDC minor units
MAX_PRICE_MINOR: Final = 10**18
MAX_RULES_PER_USER: Final = 50
RATE_LIMIT: Final = 20  # alerts per user per window; more are suppressed (counted)
RATE_WINDOW_MS: Final = 60_000
MAX_SYMBOL_LEN: Final = 32
PPM: Final = 1_000_000
MAX_DISTANCE_BPS: Final = 5_000


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule of a user. ``params`` are validated by `parse_rule`."""

    id: int
    username: str
    kind: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, **self.params}
        if "price" in out:
            out["price"] = _price_str(out["price"])
        return out


@dataclass(frozen=True, slots=True)
class Fired:
    """An alert that fired: whom it is for, which rule, what it says and its facts."""

    username: str
    rule_id: int
    kind: str
    message: str
    data: dict[str, Any]
    time_ms: int


def _price_str(minor: int) -> str:
    return str((Decimal(minor) / 10**QUOTE_DECIMALS).quantize(Decimal(1) / 10**QUOTE_DECIMALS))


def _invalid(message: str) -> ConsoleError:
    return ConsoleError(ConsoleCode.ALERT_INVALID, message)


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or value not in allowed:
        raise _invalid(f"{name} was {json.dumps(value)[:40]}, must be one of {', '.join(allowed)}")
    return value


def _symbol(body: dict[str, Any], required: bool) -> str | None:
    value = body.get("symbol")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SYMBOL_LEN or not value.isascii() \
            or not all(c.isalnum() or c in "-_" for c in value):
        raise _invalid(f"symbol was {json.dumps(value)[:40]}, must be an instrument symbol")
    return value


def _price(body: dict[str, Any]) -> int:
    value = body.get("price")
    try:
        if not isinstance(value, str) or len(value) > 40:
            raise InvalidOperation
        parsed = Decimal(value)
    except InvalidOperation:
        raise _invalid(f"price was {json.dumps(value)[:40]}, must be a decimal string (USDC)") from None
    scaled = parsed.scaleb(QUOTE_DECIMALS)
    if not parsed.is_finite() or scaled != scaled.to_integral_value() or not 0 < scaled <= MAX_PRICE_MINOR:
        raise _invalid(f"price was {value[:40]!r}, must be positive with at most {QUOTE_DECIMALS} decimals")
    return int(scaled)


def _bounded_int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{name} was {json.dumps(value)[:40]}, must be a whole number {low}..{high}")
    return value


_FIELDS: Final[dict[str, frozenset[str]]] = {
    "price_cross": frozenset({"kind", "symbol", "source", "direction", "price", "webhook"}),
    "margin_ratio": frozenset({"kind", "threshold_ppm", "webhook"}),
    "liquidation_warning": frozenset({"kind", "distance_bps", "webhook"}),
    "funding": frozenset({"kind", "symbol", "webhook"}),
    "fill": frozenset({"kind", "symbol", "webhook"}),
    "withdrawal": frozenset({"kind", "webhook"}),
    "approval": frozenset({"kind", "webhook"}),
}


def parse_rule(body: Any) -> tuple[str, dict[str, Any]]:
    """Validate a new rule (a JSON object); return its kind and normalised params, or refuse (6101)."""
    if not isinstance(body, dict):
        raise _invalid("an alert rule is a JSON object")
    kind = _choice(body, "kind", KINDS)
    unknown = sorted(set(body) - _FIELDS[kind])
    if unknown:
        raise _invalid(f"unknown field(s) for a {kind} alert: {', '.join(u[:32] for u in unknown[:5])}")
    webhook = body.get("webhook", False)
    if not isinstance(webhook, bool):
        raise _invalid("webhook must be true or false")
    params: dict[str, Any] = {"webhook": webhook}
    if kind == "price_cross":
        params.update(symbol=_symbol(body, True), source=_choice(body, "source", SOURCES),
                      direction=_choice(body, "direction", DIRECTIONS), price=_price(body))
    elif kind == "margin_ratio":
        params["threshold_ppm"] = _bounded_int(body, "threshold_ppm", 1, PPM)
    elif kind == "liquidation_warning":
        params["distance_bps"] = _bounded_int(body, "distance_bps", 1, MAX_DISTANCE_BPS)
    elif kind in ("funding", "fill"):
        params["symbol"] = _symbol(body, False)
    return kind, params


@dataclass(frozen=True, slots=True)
class Risk:
    """A user's margin state, read from the venue by the alert service (not by the evaluator)."""

    margin_ratio_ppm: int | None
    positions: tuple[tuple[str, int, int | None], ...]  # (symbol, mark, liquidation price)


@dataclass
class RateLimiter:
    """At most ``limit`` alerts per user in any ``window_ms``; the rest are counted as suppressed."""

    limit: int = RATE_LIMIT
    window_ms: int = RATE_WINDOW_MS
    sent: dict[str, deque[int]] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def allow(self, username: str, now_ms: int) -> bool:
        times = self.sent.setdefault(username, deque())
        while times and times[0] <= now_ms - self.window_ms:
            times.popleft()
        if len(times) >= self.limit:
            self.suppressed[username] = self.suppressed.get(username, 0) + 1
            return False
        times.append(now_ms)
        return True


class AlertEvaluator:
    """The rules of every user and the sides last seen; turns messages into fired alerts."""

    def __init__(self, limiter: RateLimiter | None = None) -> None:
        self.rules: dict[int, Rule] = {}
        self.roles: dict[str, frozenset[str]] = {}
        self.side: dict[tuple[int, str], bool] = {}  # (rule, symbol) -> was on the rule's side
        self.limiter = limiter or RateLimiter()
        # Indexes, so a message costs what it can fire, not the number of rules: price rules by
        # (symbol, source) sorted by threshold, the others by (user, kind) and approval rules.
        self._prices: dict[tuple[str, str], tuple[list[int], list[Rule]]] = {}
        self._last: dict[tuple[str, str], int] = {}  # the last price seen per (symbol, source)
        self._own: dict[tuple[str, str], list[Rule]] = {}
        self._approvals: list[Rule] = []

    def load(self, rules: Iterable[Rule], roles: dict[str, frozenset[str]]) -> None:
        """Replace the rule set (keeping the remembered sides of rules that stay)."""
        self.rules = {r.id: r for r in rules}
        self.roles = dict(roles)
        self.side = {k: v for k, v in self.side.items() if k[0] in self.rules}
        by_price: dict[tuple[str, str], list[Rule]] = {}
        self._own, self._approvals = {}, []
        for rule in self.rules.values():
            if rule.kind == "price_cross":
                key = (rule.params["symbol"], rule.params["source"])
                by_price.setdefault(key, []).append(rule)
                last = self._last.get(key)
                if last is not None and (rule.id, key[0]) not in self.side:
                    self._match_price(rule, last)  # a new rule starts from the last price seen
            elif rule.kind == "approval":
                self._approvals.append(rule)
            else:
                self._own.setdefault((rule.username, rule.kind), []).append(rule)
        self._prices = {}
        for key, found in by_price.items():
            found.sort(key=lambda r: (r.params["price"], r.id))
            self._prices[key] = ([r.params["price"] for r in found], found)

    def users_watching_margin(self) -> set[str]:
        return {r.username for r in self.rules.values() if r.kind in ("margin_ratio", "liquidation_warning")}

    def observe(self, messages: Iterable[tuple[str, str | None, dict[str, Any]]], now_ms: int,
                owner_of: Any = lambda a: a) -> list[Fired]:
        """Return the alerts ``messages`` fire (after the rate limit)."""
        fired: list[Fired] = []
        for channel, account, data in messages:
            if channel in ("mark", "trades"):
                hits = self._price_hits(channel, data)
            else:
                owner = owner_of(account) if account is not None else None
                hits = [(rule, self._match(rule, channel, data)) for rule in self._candidates(channel, owner)]
            for rule, hit in hits:
                if hit is not None:
                    fired.append(Fired(rule.username, rule.id, rule.kind, hit, _facts(channel, data), now_ms))
        return self._limited(fired, now_ms)

    def _price_hits(self, channel: str, data: dict[str, Any]) -> list[tuple[Rule, str | None]]:
        """Evaluate only the rules whose threshold lies between the last price and this one."""
        source = "mark" if channel == "mark" else "last"
        symbol, value = data.get("symbol"), data.get("mark" if source == "mark" else "price")
        if not isinstance(symbol, str) or not isinstance(value, int) or isinstance(value, bool):
            return []
        key = (symbol, source)
        last = self._last.get(key)
        self._last[key] = value
        indexed = self._prices.get(key)
        if indexed is None:
            return []
        thresholds, rules = indexed
        if last is None:
            chosen = rules  # the first price: every rule learns its side (nothing fires)
        else:
            # A rule's side ("price >= threshold") changes only if its threshold is in (low, high].
            low, high = min(last, value), max(last, value)
            chosen = rules[bisect.bisect_right(thresholds, low):bisect.bisect_right(thresholds, high)]
        return [(rule, self._match_price(rule, value)) for rule in chosen]

    def _match_price(self, rule: Rule, value: int) -> str | None:
        p = rule.params
        above = value >= p["price"]
        if not self._crossed(rule, p["symbol"], above if p["direction"] == "above" else not above):
            return None
        return (f"{p['symbol']} {p['source']} price {_price_str(value)} crossed {p['direction']} "
                f"{_price_str(p['price'])}")

    def observe_risk(self, username: str, risk: Risk, now_ms: int) -> list[Fired]:
        """Return the margin-ratio and liquidation-warning alerts of ``username``'s current risk."""
        fired = []
        for rule in [r for r in self.rules.values() if r.username == username]:
            if rule.kind == "margin_ratio" and risk.margin_ratio_ppm is not None:
                threshold = rule.params["threshold_ppm"]
                if self._crossed(rule, "", risk.margin_ratio_ppm >= threshold):
                    fired.append(Fired(username, rule.id, rule.kind,
                                       f"margin ratio {risk.margin_ratio_ppm / 10_000:.2f} % reached "
                                       f"{threshold / 10_000:.2f} %",
                                       {"margin_ratio_ppm": risk.margin_ratio_ppm}, now_ms))
            elif rule.kind == "liquidation_warning":
                for symbol, mark, liq in risk.positions:
                    if liq is None or mark <= 0:
                        continue
                    distance_bps = abs(mark - liq) * 10_000 // mark
                    if self._crossed(rule, symbol, distance_bps <= rule.params["distance_bps"]):
                        fired.append(Fired(username, rule.id, rule.kind,
                                           f"{symbol} mark {_price_str(mark)} is within "
                                           f"{distance_bps / 100:.2f} % of the liquidation price "
                                           f"{_price_str(liq)}",
                                           {"symbol": symbol, "mark": _price_str(mark),
                                            "liquidation_price": _price_str(liq)}, now_ms))
        return self._limited(fired, now_ms)

    # -- internals ----------------------------------------------------------------------------

    def _candidates(self, channel: str, owner: str | None) -> list[Rule]:
        if channel == "approvals":
            return self._approvals
        kind = {"fills": "fill", "income": "funding", "withdrawals": "withdrawal"}.get(channel)
        if kind is None or owner is None:
            return []
        return self._own.get((owner, kind), [])

    def _match(self, rule: Rule, channel: str, data: dict[str, Any]) -> str | None:
        p = rule.params
        if rule.kind == "fill" and p["symbol"] in (None, data.get("symbol")):
            flag = " (liquidation)" if data.get("liquidation") else (" (ADL)" if data.get("adl") else "")
            price = data.get("price")
            shown = _price_str(price) if isinstance(price, int) else price
            return f"fill{flag}: {data.get('side')} {data.get('qty')} {data.get('symbol')} at {shown}"
        if rule.kind == "funding" and data.get("type") == "funding" \
                and p["symbol"] in (None, data.get("symbol")):
            return f"funding on {data.get('symbol')}: {data.get('amount')} USDC minor units"
        if rule.kind == "withdrawal":
            return f"withdrawal {data.get('id')} is {data.get('state')}"
        if rule.kind == "approval":
            if data.get("group") not in self.roles.get(rule.username, frozenset()) \
                    or data.get("username") == rule.username:
                return None
            return (f"withdrawal {data.get('id')} of {data.get('username')} awaits approval "
                    f"({data.get('approvals')}/{data.get('required')})")
        return None

    def _crossed(self, rule: Rule, key: str, on_side: bool) -> bool:
        """Remember the side; tell whether it just moved onto the rule's side (not the first look)."""
        before = self.side.get((rule.id, key))
        self.side[(rule.id, key)] = on_side
        return before is False and on_side

    def _limited(self, fired: list[Fired], now_ms: int) -> list[Fired]:
        return [f for f in fired if self.limiter.allow(f.username, now_ms)]


def _facts(channel: str, data: dict[str, Any]) -> dict[str, Any]:
    """Return the facts an alert carries: the message's scalar fields, prices as decimal strings."""
    out: dict[str, Any] = {"channel": channel}
    for key, value in data.items():
        if key in ("account", "username") and channel != "approvals":
            continue
        if isinstance(value, (str, int, bool)) or value is None:
            out[key] = _price_str(value) if key in ("mark", "price", "index") and isinstance(value, int) \
                and not isinstance(value, bool) else value
    return out
