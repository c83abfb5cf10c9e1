"""Positions indexed by the mark prices that could make their account unsafe.

Each account gets, per instrument it holds, a safe band ``[lo, hi]`` around
the current mark (computed by the clearing house, see docs/margin.md): while
every mark stays strictly inside its band the account provably stays above
maintenance margin. The index keeps the lower edges in a max-heap and the
upper edges in a min-heap, so a mark tick pops exactly the entries it
crosses, ``O(k log n)`` for ``k`` crossed entries, and never scans the rest.

Entries are never removed in place: re-banding an account bumps its epoch
and pushes new entries; popped entries whose epoch is outdated are skipped.
The heaps are rebuilt when outdated entries dominate.
"""

from __future__ import annotations

import heapq

REBUILD_FACTOR = 4
REBUILD_MIN = 4096


class LiquidationIndex:
    """The band edges of one instrument."""

    __slots__ = ("hi", "lo")

    def __init__(self) -> None:
        self.lo: list[tuple[int, int, str]] = []  # (-lo, epoch, account): max-heap on lo
        self.hi: list[tuple[int, int, str]] = []  # (hi, epoch, account): min-heap on hi

    def push(self, account: str, epoch: int, lo: int, hi: int | None) -> None:
        """Index an account's band on this instrument (``hi`` None: no upper edge)."""
        heapq.heappush(self.lo, (-lo, epoch, account))
        if hi is not None:
            heapq.heappush(self.hi, (hi, epoch, account))

    def crossed(self, mark: int, epochs: dict[str, int]) -> list[str]:
        """Pop and return the accounts whose band ``mark`` reaches (each once, current only)."""
        out: list[str] = []
        lo = self.lo
        while lo and -lo[0][0] >= mark:
            _, epoch, account = heapq.heappop(lo)
            if epochs.get(account) == epoch:
                out.append(account)
        hi = self.hi
        while hi and hi[0][0] <= mark:
            _, epoch, account = heapq.heappop(hi)
            if epochs.get(account) == epoch:
                out.append(account)
        return out

    def maybe_rebuild(self, epochs: dict[str, int], live: int) -> None:
        """Drop outdated entries once they outnumber the ``live`` holders by REBUILD_FACTOR."""
        if len(self.lo) + len(self.hi) < max(REBUILD_MIN, 2 * REBUILD_FACTOR * live):
            return
        self.lo = [e for e in self.lo if epochs.get(e[2]) == e[1]]
        self.hi = [e for e in self.hi if epochs.get(e[2]) == e[1]]
        heapq.heapify(self.lo)
        heapq.heapify(self.hi)
