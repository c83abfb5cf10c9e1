"""Derivative instruments configured in data (TOML): perpetuals, dated futures, options.

Units, everywhere in the exchange: a price is an integer number of quote
minor units (USDC: 10^-6) per one unit of the underlying; a quantity is an
integer number of contracts; one contract is ``1 / contracts_per_unit`` of the
underlying, so ``notional = qty * price // contracts_per_unit``. Loading
refuses a tick size that is not a multiple of ``contracts_per_unit``, which
makes every notional of a tick-aligned price exact (the division never rounds).
Rates are parts per million (``_ppm``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exchange.engine.instrument import Instrument

PPM = 1_000_000
# The fixed reference set (dated instruments expiring 2026-03-27): tests, docs examples and
# the market-day scenario use it so their numbers never change with the calendar.
DEFAULT_CONFIG = Path(__file__).with_name("data") / "instruments.toml"
# What a server runs: perpetuals plus a listing calendar that generates dated futures and
# options relative to the current date (exchange/calendar.py, docs/market.md).
MARKET_CONFIG = Path(__file__).with_name("data") / "market.toml"
MAX_INSTRUMENTS = 1_000
MAX_TIERS = 16

Kind = Literal["perpetual", "future", "option"]
OptionType = Literal["call", "put"]


class ConfigError(ValueError):
    """The instrument file is inconsistent; the message names the field and its value."""


@dataclass(frozen=True, slots=True)
class RiskTier:
    """Margin rates for positions whose notional is at most ``max_notional``."""

    max_notional: int
    im_ppm: int
    mm_ppm: int


@dataclass(frozen=True, slots=True)
class OptionMargin:
    """Seller margin rule of options (see docs/margin.md)."""

    im_ppm: int = 150_000
    im_floor_ppm: int = 100_000
    mm_ppm: int = 75_000
    mm_floor_ppm: int = 50_000


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """Which price sources make up an underlying's index, and when it is fresh."""

    underlying: str
    sources: tuple[str, ...]
    min_sources: int
    staleness_ms: int
    # What the price feeds read (docs/market.md): the ccxt market symbol, and the simulated
    # feed's start price and step parameters.
    pair: str = ""
    start_price: int = 0
    step_vol_ppm: int = 200
    jump_prob_ppm: int = 500
    jump_ppm: int = 5_000
    reversion_ppm: int = 1_000
    source_spread_ppm: int = 50


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """One derivative instrument: matching rules, margin, fees, funding and expiry."""

    symbol: str
    kind: Kind
    underlying: str
    contracts_per_unit: int
    tick_size: int
    lot_size: int
    max_qty: int
    band_bps: int
    maker_fee_ppm: int
    taker_fee_ppm: int
    liquidation_fee_ppm: int
    tiers: tuple[RiskTier, ...] = ()
    quote_asset: str = "USDC"
    expiry_ms: int | None = None
    option_type: OptionType | None = None
    strike: int | None = None
    implied_vol_ppm: int | None = None
    option_margin: OptionMargin = field(default_factory=OptionMargin)
    funding_interval_ms: int = 28_800_000
    funding_cap_ppm: int = 3_000
    interest_ppm: int = 100
    settlement_window_ms: int = 1_800_000

    @property
    def is_option(self) -> bool:
        """Tell whether positions pay premium upfront and settle on intrinsic value."""
        return self.kind == "option"

    def notional(self, qty: int, price: int) -> int:
        """Return the quote value of ``qty`` contracts at ``price`` (exact for tick prices)."""
        return qty * price // self.contracts_per_unit

    def tier(self, notional: int) -> RiskTier:
        """Return the risk-limit tier a position of ``notional`` falls into (the last caps)."""
        for tier in self.tiers:
            if notional <= tier.max_notional:
                return tier
        return self.tiers[-1]

    def engine_instrument(self) -> Instrument:
        """Return the matching engine's view of this instrument."""
        return Instrument(symbol=self.symbol, tick_size=self.tick_size, lot_size=self.lot_size,
                          min_qty=self.lot_size, max_qty=self.max_qty, band_bps=self.band_bps)

    def round_to_tick(self, price: int) -> int:
        """Round a price to the nearest tick, halves up, never below one tick."""
        tick = self.tick_size
        return max(tick, (price + tick // 2) // tick * tick)


CYCLES: tuple[str, ...] = ("weekly", "monthly", "quarterly")
MAX_EXPIRIES_PER_CYCLE = 8
MAX_STRIKES_EACH_SIDE = 20


@dataclass(frozen=True, slots=True)
class CalendarConfig:
    """How the listing calendar generates one underlying's dated instruments (docs/market.md)."""

    underlying: str
    future_expiries: tuple[tuple[str, int], ...]  # (cycle, how many upcoming expiries)
    option_expiries: tuple[tuple[str, int], ...]
    strike_step: int
    strikes_each_side: int
    future: InstrumentSpec  # prototypes: symbol, expiry and strike are filled in per listing
    call: InstrumentSpec
    put: InstrumentSpec


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    """Every instrument and index of the exchange."""

    instruments: dict[str, InstrumentSpec]
    indices: dict[str, IndexConfig]
    calendar: dict[str, CalendarConfig] = field(default_factory=dict)


def load_instruments(path: Path | None = None) -> ExchangeConfig:
    """Load and validate the instrument file (default: exchange/data/instruments.toml)."""
    with (path or DEFAULT_CONFIG).open("rb") as fh:
        return parse_config(tomllib.load(fh))


def parse_config(data: dict[str, Any]) -> ExchangeConfig:
    """Build the configuration from parsed TOML, refusing anything inconsistent."""
    defaults = dict(data.get("defaults", {}))
    tier_sets = {name: _tiers(name, rows) for name, rows in data.get("tiers", {}).items()}
    option_margin = OptionMargin(**data.get("option_margin", {}))
    rows = data.get("instrument", [])
    calendar = {u: _calendar(u, dict(cfg), defaults, tier_sets, option_margin)
                for u, cfg in data.get("calendar", {}).items()}
    if not 0 < len(rows) <= MAX_INSTRUMENTS:
        raise ConfigError(f"instrument count was {len(rows)}, must be 1..{MAX_INSTRUMENTS}")
    instruments: dict[str, InstrumentSpec] = {}
    for row in rows:
        spec = _instrument({**defaults, **row}, tier_sets, option_margin)
        if spec.symbol in instruments:
            raise ConfigError(f"symbol {spec.symbol} is listed twice")
        instruments[spec.symbol] = spec
    indices = {name: _index(name, cfg) for name, cfg in data.get("index", {}).items()}
    for spec in instruments.values():
        if spec.underlying not in indices:
            raise ConfigError(f"{spec.symbol}: underlying {spec.underlying} has no [index] entry")
    for underlying in calendar:
        if underlying not in indices:
            raise ConfigError(f"calendar {underlying}: underlying has no [index] entry")
    for cfg in indices.values():
        if not 0 < cfg.min_sources <= len(cfg.sources):
            raise ConfigError(f"index {cfg.underlying}: min_sources was {cfg.min_sources}, "
                              f"must be 1..{len(cfg.sources)}")
    return ExchangeConfig(instruments, indices, calendar)


_INDEX_INTS = ("start_price", "step_vol_ppm", "jump_prob_ppm", "jump_ppm", "reversion_ppm",
               "source_spread_ppm")


def _index(name: str, cfg: dict[str, Any]) -> IndexConfig:
    ints = {k: int(cfg[k]) for k in _INDEX_INTS if k in cfg}
    index = IndexConfig(name, tuple(cfg["sources"]), int(cfg["min_sources"]), int(cfg["staleness_ms"]),
                        pair=str(cfg.get("pair", f"{name}/USD")), **ints)
    if index.staleness_ms <= 0:
        raise ConfigError(f"index {name}: staleness_ms was {index.staleness_ms}, must be positive")
    if any(v < 0 for v in ints.values()) or index.jump_prob_ppm > PPM:
        raise ConfigError(f"index {name}: simulated feed parameters must be 0..{PPM}, got {ints}")
    return index


def _tiers(name: str, rows: list[dict[str, int]]) -> tuple[RiskTier, ...]:
    tiers = tuple(RiskTier(int(r["max_notional"]), int(r["im_ppm"]), int(r["mm_ppm"])) for r in rows)
    if not 0 < len(tiers) <= MAX_TIERS:
        raise ConfigError(f"tier set {name} had {len(tiers)} tiers, must be 1..{MAX_TIERS}")
    previous = RiskTier(0, 0, 0)
    for tier in tiers:
        if tier.max_notional <= previous.max_notional or tier.im_ppm < previous.im_ppm:
            raise ConfigError(f"tier set {name}: tiers must grow in max_notional and rates")
        if not 0 < tier.mm_ppm < tier.im_ppm < PPM:
            raise ConfigError(f"tier set {name}: need 0 < mm_ppm < im_ppm < {PPM}, "
                              f"got mm={tier.mm_ppm} im={tier.im_ppm}")
        previous = tier
    return tiers


def _instrument(row: dict[str, Any], tier_sets: dict[str, tuple[RiskTier, ...]],
                option_margin: OptionMargin) -> InstrumentSpec:
    symbol = str(row["symbol"])
    kind = row["kind"]
    if kind not in ("perpetual", "future", "option"):
        raise ConfigError(f"{symbol}: kind was {kind!r}, must be perpetual, future or option")
    tiers: tuple[RiskTier, ...] = ()
    if kind != "option":
        tiers = tier_sets.get(str(row.get("tiers", "")), ())
        if not tiers:
            raise ConfigError(f"{symbol}: tiers was {row.get('tiers')!r}, must name a [[tiers.X]] set")
    spec = InstrumentSpec(
        symbol=symbol, kind=kind, underlying=str(row["underlying"]),
        contracts_per_unit=int(row["contracts_per_unit"]), tick_size=int(row["tick_size"]),
        lot_size=int(row.get("lot_size", 1)), max_qty=int(row["max_qty"]),
        band_bps=int(row["band_bps"]), maker_fee_ppm=int(row["maker_fee_ppm"]),
        taker_fee_ppm=int(row["taker_fee_ppm"]), liquidation_fee_ppm=int(row["liquidation_fee_ppm"]),
        tiers=tiers, quote_asset=str(row.get("quote_asset", "USDC")),
        expiry_ms=None if row.get("expiry_ms") is None else int(row["expiry_ms"]),
        option_type=row.get("option_type"),
        strike=None if row.get("strike") is None else int(row["strike"]),
        implied_vol_ppm=None if row.get("implied_vol_ppm") is None else int(row["implied_vol_ppm"]),
        option_margin=option_margin,
        funding_interval_ms=int(row["funding_interval_ms"]),
        funding_cap_ppm=int(row["funding_cap_ppm"]), interest_ppm=int(row["interest_ppm"]),
        settlement_window_ms=int(row["settlement_window_ms"]),
    )
    _check(spec)
    return spec


def _check(spec: InstrumentSpec) -> None:
    s = spec.symbol
    if spec.tick_size % spec.contracts_per_unit != 0:
        raise ConfigError(f"{s}: tick_size {spec.tick_size} must be a multiple of "
                          f"contracts_per_unit {spec.contracts_per_unit} so notionals are exact")
    if spec.maker_fee_ppm < 0 and -spec.maker_fee_ppm > spec.taker_fee_ppm:
        raise ConfigError(f"{s}: maker rebate {-spec.maker_fee_ppm} ppm exceeds the taker fee "
                          f"{spec.taker_fee_ppm} ppm; the fees account would pay out more than it earns")
    if spec.kind != "perpetual" and spec.expiry_ms is None:
        raise ConfigError(f"{s}: a {spec.kind} needs expiry_ms")
    if spec.kind == "option" and (spec.option_type not in ("call", "put") or not spec.strike
                                  or not spec.implied_vol_ppm):
        raise ConfigError(f"{s}: an option needs option_type call/put, strike and implied_vol_ppm")
    if spec.strike is not None and spec.strike % spec.tick_size != 0:
        raise ConfigError(f"{s}: strike {spec.strike} must be a multiple of tick_size")
    try:
        spec.engine_instrument().check()
    except ValueError as exc:
        raise ConfigError(f"{s}: {exc}") from None


def _calendar(underlying: str, cfg: dict[str, Any], defaults: dict[str, Any],
              tier_sets: dict[str, tuple[RiskTier, ...]], option_margin: OptionMargin) -> CalendarConfig:
    where = f"calendar {underlying}"
    futures = _cycles(where, cfg.get("futures", {}))
    options = _cycles(where, cfg.get("options", {}))
    step = int(cfg.get("strike_step", 0))
    each_side = int(cfg.get("strikes_each_side", 0))
    base = {**defaults, "underlying": underlying, "expiry_ms": 1}
    future = _instrument({**base, **cfg.get("future", {}), "symbol": f"{underlying}-FUTURE",
                          "kind": "future"}, tier_sets, option_margin)
    option_row = {**base, **cfg.get("option", {}), "kind": "option", "strike": step}
    call_vol = int(cfg.get("call_implied_vol_ppm", 0))
    put_vol = int(cfg.get("put_implied_vol_ppm", call_vol))
    call = _instrument({**option_row, "symbol": f"{underlying}-CALL", "option_type": "call",
                        "implied_vol_ppm": call_vol}, tier_sets, option_margin)
    put = _instrument({**option_row, "symbol": f"{underlying}-PUT", "option_type": "put",
                       "implied_vol_ppm": put_vol}, tier_sets, option_margin)
    if options and not 0 <= each_side <= MAX_STRIKES_EACH_SIDE:
        raise ConfigError(f"{where}: strikes_each_side was {each_side}, must be 0..{MAX_STRIKES_EACH_SIDE}")
    if step % 1_000_000 != 0:
        raise ConfigError(f"{where}: strike_step was {step}, must be whole quote units (10^6 minor)")
    return CalendarConfig(underlying, futures, options, step, each_side, future, call, put)


def _cycles(where: str, counts: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    out = []
    for cycle, count in sorted(counts.items()):
        if cycle not in CYCLES:
            raise ConfigError(f"{where}: cycle was {cycle!r}, must be one of {list(CYCLES)}")
        if not 0 <= int(count) <= MAX_EXPIRIES_PER_CYCLE:
            raise ConfigError(f"{where}: {cycle} count was {count}, must be 0..{MAX_EXPIRIES_PER_CYCLE}")
        out.append((cycle, int(count)))
    return tuple(out)
