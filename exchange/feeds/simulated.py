"""The simulated feed: a seeded random walk with jumps, quoted by every configured source.

Each underlying's "true" price moves once per ``step_ms``: a move of
``step_vol_ppm`` scale (the sum of three integer uniforms, roughly normal)
and, with probability ``jump_prob_ppm`` per step, a jump of
``+-jump_ppm``. Every source of the index quotes the true price plus its
own small deterministic offset (up to ``source_spread_ppm``), so the index
(the median) behaves like a real three-venue index. All arithmetic is on
integers; the random numbers come from ``random.Random`` seeded by
``(seed, underlying, step)``, so the path is a pure function of the seed
and the step number: two feeds with the same seed quote the same prices at
the same times whatever their poll schedule.

A poll more than ``MAX_CATCHUP_STEPS`` steps after the previous one moves
the walk only that many steps (the rest of the gap is skipped, so a long
pause costs bounded work).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from exchange.feeds import SourceQuote
from exchange.instruments import PPM, IndexConfig

MAX_CATCHUP_STEPS: Final = 3_600
DEFAULT_STEP_MS: Final = 1_000


@dataclass(slots=True)
class _Walk:
    price: int
    step: int  # the step number ``price`` belongs to
    offsets: dict[str, int] = field(default_factory=dict)


class SimulatedFeed:
    """A deterministic simulated market for every configured index (see the module docstring)."""

    def __init__(self, indices: dict[str, IndexConfig], seed: int = 1, *,
                 step_ms: int = DEFAULT_STEP_MS, start_ms: int | None = None) -> None:
        if step_ms <= 0:
            raise ValueError(f"step_ms was {step_ms}, must be positive")
        for cfg in indices.values():
            if cfg.start_price <= 0:
                raise ValueError(f"index {cfg.underlying}: start_price was {cfg.start_price}, "
                                 "must be positive for the simulated feed")
        self.indices = indices
        self.seed = seed
        self.step_ms = step_ms
        self.start_ms = start_ms
        self.walks: dict[str, _Walk] = {}

    def poll(self, now_ms: int) -> list[SourceQuote]:
        """Advance every walk to ``now_ms`` and return one quote per source."""
        if self.start_ms is None:
            self.start_ms = now_ms
        step = max(0, now_ms - self.start_ms) // self.step_ms
        quotes = []
        for underlying, cfg in sorted(self.indices.items()):
            walk = self.walks.get(underlying)
            if walk is None:
                walk = self.walks[underlying] = _Walk(cfg.start_price, 0)
            first = max(walk.step + 1, step - MAX_CATCHUP_STEPS + 1)
            for n in range(first, step + 1):
                walk.price = self._move(cfg, walk.price, n)
            walk.step = max(walk.step, step)
            for source in cfg.sources:
                offset = self._offset(cfg, source, step)
                quotes.append(SourceQuote(underlying, source, walk.price + walk.price * offset // PPM,
                                          now_ms))
        return quotes

    def price(self, underlying: str) -> int | None:
        """Return the current true price of ``underlying`` (None before the first poll)."""
        walk = self.walks.get(underlying)
        return None if walk is None else walk.price

    def _rng(self, underlying: str, step: int, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{underlying}:{step}:{salt}")  # noqa: S311 (simulation, not secrets)

    def _move(self, cfg: IndexConfig, price: int, step: int) -> int:
        rng = self._rng(cfg.underlying, step)
        vol = cfg.step_vol_ppm
        move_ppm = sum(rng.randint(-vol, vol) for _ in range(3))
        if rng.randrange(PPM) < cfg.jump_prob_ppm:
            move_ppm += cfg.jump_ppm if rng.randrange(2) else -cfg.jump_ppm
        # Mean reversion towards the start price keeps a long demo from drifting off the strikes.
        move_ppm += (cfg.start_price - price) * cfg.reversion_ppm // price
        return max(1, price + price * move_ppm // PPM)

    def _offset(self, cfg: IndexConfig, source: str, step: int) -> int:
        spread = cfg.source_spread_ppm
        return self._rng(cfg.underlying, step, source).randint(-spread, spread) if spread else 0
