"""The simulation's fake clock: milliseconds that move only when the simulation moves them."""

from __future__ import annotations

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class SimClock:
    """A settable millisecond clock shared by every component of one simulated platform."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        """Move forward by ``ms`` (never backwards: a skew is modelled as a jump forward)."""
        assert ms >= 0, f"ms was {ms}, the clock never runs backwards"
        self.now_ms += ms
