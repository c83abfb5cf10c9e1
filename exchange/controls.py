"""Market kill switches, circuit breakers and dead man's switches (docs/operations.md).

Pure and deterministic like the rest of the venue: every change is a journaled
venue command (``SetMarketStatus``, ``SetBreaker``, ``ArmDeadman``) carrying
its own time, so a restart or a replay reaches the same state and the same
state hash. The venue asks this object three questions:

- may an order (or amend) enter ``symbol`` at ``now_ms``? (``refusal``)
- may a cancel? (refused only while the market is ``halted``: the book is frozen)
- did the trade just printed move the price more than the breaker allows
  within its window? Then the market halts itself until ``now + cooldown``.

Modes of a market:

``open``         normal trading.
``cancel_only``  cancels run; new orders, amends and TP/SL triggers are refused (2022).
``halted``       nothing enters and nothing is cancelled (2021); the book is frozen as it was.
                 A halt with ``until_ms`` (the circuit breaker's) lifts itself at that time.

The dead man's switch (Kraken ``cancelAllOrdersAfter``, Binance
``countdownCancelAll``) is per account: ``arm(account, timeout_ms, now_ms)``
sets a deadline; re-arming moves it; a timeout of 0 disarms. When the venue
clock passes the deadline every live order of the account (cross and
isolated, on every market) is cancelled before any later command runs.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import msgspec

from exchange.risk.codes import RiskCode

OPEN: Final = "open"
CANCEL_ONLY: Final = "cancel_only"
HALTED: Final = "halted"
MODES: Final = (OPEN, CANCEL_ONLY, HALTED)
REASON_MAX_CHARS: Final = 120
DEADMAN_MIN_MS: Final = 1_000  # a shorter countdown would fire between two heartbeats of any client
DEADMAN_MAX_MS: Final = 86_400_000
BREAKER_MAX_BPS: Final = 10_000
BREAKER_WINDOW_MAX_MS: Final = 86_400_000
BREAKER_COOLDOWN_MAX_MS: Final = 86_400_000
BREAKER_REASON: Final = "circuit_breaker"


class MarketStatus(msgspec.Struct, frozen=True):
    """The mode of one market; ``until_ms`` > 0: the mode ends by itself at that time."""

    symbol: str
    mode: str
    until_ms: int = 0
    reason: str = ""


class Breaker(msgspec.Struct, frozen=True):
    """Halt ``symbol`` for ``cooldown_ms`` when trades within ``window_ms`` span over ``max_move_bps``."""

    symbol: str
    max_move_bps: int
    window_ms: int
    cooldown_ms: int


class ControlsState(msgspec.Struct, frozen=True):
    """Everything a snapshot needs to rebuild ``MarketControls`` (sorted, canonical)."""

    status: list[MarketStatus] = msgspec.field(default_factory=list)
    breakers: list[Breaker] = msgspec.field(default_factory=list)
    # Per breaker symbol: the monotonic (ts_ms, price) windows of highs and lows.
    highs: dict[str, list[tuple[int, int]]] = msgspec.field(default_factory=dict)
    lows: dict[str, list[tuple[int, int]]] = msgspec.field(default_factory=dict)
    deadman: dict[str, int] = msgspec.field(default_factory=dict)
    trips: int = 0


class ControlError(ValueError):
    """A control command with values the venue cannot hold; nothing changed, nothing journaled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = RiskCode.INVALID_CONTROL
        self.message = message


class MarketClosed(Exception):
    """A cancel on a halted market: refused before anything changed or was journaled."""

    def __init__(self, code: RiskCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MarketControls:
    """The kill-switch state of a venue; empty (the default) costs one truth test per order."""

    def __init__(self) -> None:
        self.status: dict[str, MarketStatus] = {}
        self.breakers: dict[str, Breaker] = {}
        self._highs: dict[str, deque[tuple[int, int]]] = {}
        self._lows: dict[str, deque[tuple[int, int]]] = {}
        self.deadman: dict[str, int] = {}
        self.trips = 0

    # ------------------------------------------------------------ checks

    def refusal(self, symbol: str, now_ms: int) -> tuple[RiskCode, str]:
        """Return why a new order or amend on ``symbol`` is refused at ``now_ms`` (OK: it is not)."""
        st = self.status.get(symbol)
        if st is None or (st.until_ms and now_ms >= st.until_ms):
            return RiskCode.OK, ""
        why = f" ({st.reason})" if st.reason else ""
        until = f" until {st.until_ms}" if st.until_ms else ""
        if st.mode == HALTED:
            return RiskCode.MARKET_HALTED, f"{symbol} is halted{until}{why}: no orders, amends or cancels"
        return RiskCode.MARKET_CANCEL_ONLY, f"{symbol} is cancel-only{until}{why}: only cancels are accepted"

    def cancel_refusal(self, symbol: str, now_ms: int) -> MarketClosed | None:
        """Return the refusal of a trader's cancel on ``symbol`` (only a halt refuses cancels)."""
        code, message = self.refusal(symbol, now_ms)
        return MarketClosed(code, message) if code == RiskCode.MARKET_HALTED else None

    def mode(self, symbol: str, now_ms: int) -> str:
        """Return the mode in force on ``symbol`` at ``now_ms``."""
        st = self.status.get(symbol)
        if st is None or (st.until_ms and now_ms >= st.until_ms):
            return OPEN
        return st.mode

    # ------------------------------------------------------------ changes

    def set_status(self, symbol: str, mode: str, until_ms: int, reason: str) -> None:
        """Put ``symbol`` in ``mode`` (``open`` clears any halt, the breaker's included)."""
        check_status(mode, until_ms, reason)
        if mode == OPEN:
            self.status.pop(symbol, None)
        else:
            self.status[symbol] = MarketStatus(symbol, mode, until_ms, reason)

    def set_breaker(self, symbol: str, max_move_bps: int, window_ms: int, cooldown_ms: int) -> None:
        """Configure (``max_move_bps`` > 0) or remove (0) the circuit breaker of ``symbol``."""
        check_breaker(max_move_bps, window_ms, cooldown_ms)
        self._highs.pop(symbol, None)
        self._lows.pop(symbol, None)
        if max_move_bps == 0:
            self.breakers.pop(symbol, None)
            return
        self.breakers[symbol] = Breaker(symbol, max_move_bps, window_ms, cooldown_ms)
        self._highs[symbol] = deque()
        self._lows[symbol] = deque()

    def on_trade(self, symbol: str, ts_ms: int, price: int) -> bool:
        """Feed one trade to the breaker of ``symbol``; True when it trips (the market halts)."""
        cfg = self.breakers.get(symbol)
        if cfg is None:
            return False
        highs, lows = self._highs[symbol], self._lows[symbol]
        while highs and highs[-1][1] <= price:
            highs.pop()
        highs.append((ts_ms, price))
        while lows and lows[-1][1] >= price:
            lows.pop()
        lows.append((ts_ms, price))
        oldest = ts_ms - cfg.window_ms
        while highs[0][0] < oldest:
            highs.popleft()
        while lows[0][0] < oldest:
            lows.popleft()
        hi, lo = highs[0][1], lows[0][1]
        if (hi - lo) * 10_000 <= cfg.max_move_bps * lo:
            return False
        self.trips += 1
        self.status[symbol] = MarketStatus(symbol, HALTED, ts_ms + cfg.cooldown_ms, BREAKER_REASON)
        # The cooldown starts a fresh window: the move that tripped it is not counted twice.
        highs.clear()
        lows.clear()
        return True

    def arm(self, account: str, timeout_ms: int, now_ms: int) -> int:
        """Arm (or re-arm) ``account``'s dead man's switch; 0 disarms. Return the deadline (0: none)."""
        check_deadman(timeout_ms)
        if timeout_ms == 0:
            self.deadman.pop(account, None)
            return 0
        deadline = now_ms + timeout_ms
        self.deadman[account] = deadline
        return deadline

    def deadman_due(self, now_ms: int) -> bool:
        """Tell whether a dead man's switch has a deadline at or before ``now_ms``."""
        return any(deadline <= now_ms for deadline in self.deadman.values()) if self.deadman else False

    def expired_accounts(self, now_ms: int) -> list[str]:
        """Remove and return (sorted) the accounts whose deadline passed at ``now_ms``."""
        fired = sorted(a for a, deadline in self.deadman.items() if deadline <= now_ms)
        for account in fired:
            del self.deadman[account]
        return fired

    # ------------------------------------------------------------ state

    def empty(self) -> bool:
        return not (self.status or self.breakers or self.deadman or self.trips)

    def state(self) -> ControlsState:
        return ControlsState(
            status=[s for _, s in sorted(self.status.items())],
            breakers=[b for _, b in sorted(self.breakers.items())],
            highs={s: list(d) for s, d in sorted(self._highs.items())},
            lows={s: list(d) for s, d in sorted(self._lows.items())},
            deadman=dict(sorted(self.deadman.items())), trips=self.trips)

    @classmethod
    def from_state(cls, state: ControlsState) -> MarketControls:
        c = cls()
        c.status = {s.symbol: s for s in state.status}
        c.breakers = {b.symbol: b for b in state.breakers}
        c._highs = {s: deque((t, p) for t, p in d) for s, d in state.highs.items()}
        c._lows = {s: deque((t, p) for t, p in d) for s, d in state.lows.items()}
        c.deadman = dict(state.deadman)
        c.trips = state.trips
        return c


def check_status(mode: str, until_ms: int, reason: str) -> None:
    """Refuse a market mode the journal could not hold or the venue does not know."""
    if mode not in MODES:
        raise ControlError(f"mode was {mode[:40]!r}, must be one of {', '.join(MODES)}")
    if not 0 <= until_ms < 2**63:
        raise ControlError(f"until_ms was {until_ms}, must be 0 (no end) or a time in ms")
    if len(reason) > REASON_MAX_CHARS:
        raise ControlError(f"reason was {len(reason)} chars, at most {REASON_MAX_CHARS}")


def check_breaker(max_move_bps: int, window_ms: int, cooldown_ms: int) -> None:
    """Refuse breaker settings outside their limits."""
    if not 0 <= max_move_bps <= BREAKER_MAX_BPS:
        raise ControlError(f"max_move_bps was {max_move_bps}, must be 0 (off) ..{BREAKER_MAX_BPS}")
    if max_move_bps and not 1 <= window_ms <= BREAKER_WINDOW_MAX_MS:
        raise ControlError(f"window_ms was {window_ms}, must be 1..{BREAKER_WINDOW_MAX_MS}")
    if max_move_bps and not 1 <= cooldown_ms <= BREAKER_COOLDOWN_MAX_MS:
        raise ControlError(f"cooldown_ms was {cooldown_ms}, must be 1..{BREAKER_COOLDOWN_MAX_MS}")


def check_deadman(timeout_ms: int) -> None:
    """Refuse a countdown outside 0 (disarm) or DEADMAN_MIN_MS..DEADMAN_MAX_MS."""
    if timeout_ms != 0 and not DEADMAN_MIN_MS <= timeout_ms <= DEADMAN_MAX_MS:
        raise ControlError(f"timeout_ms was {timeout_ms}, must be 0 (disarm) or "
                           f"{DEADMAN_MIN_MS}..{DEADMAN_MAX_MS}")
