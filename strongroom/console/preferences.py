"""Personal settings: a person's layout and defaults (panels, order defaults, theme, units).

A settings document is a small JSON object with a fixed set of fields
(docs/console.md, "Personal settings"). `parse_settings` validates a change
completely before anything is stored (unknown field -> 6002, bad value -> 6001),
so a refused change leaves the stored document as it was. Fields not sent keep
their stored value; a field never set reads as its default. The store keeps
one row per user, and every read and write names the user from the caller's
own authentication, never from the request: nobody can read or write another
person's settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from sqlalchemy.orm import Session, sessionmaker

from strongroom.console.codes import ConsoleCode, ConsoleError
from strongroom.console.models import UserSettings

THEMES: Final = ("dark", "light")
UNITS: Final = ("whole", "minor")  # amounts as decimal whole units (1.5 USDC) or minor units (1500000)
MARGIN_MODES: Final = ("cross", "isolated")
ORDER_TYPES: Final = ("limit", "market", "stop_market", "stop_limit")
CANDLE_INTERVALS: Final = ("1m", "5m", "15m", "1h", "4h", "1d")
# The trade page's panels, in their default order; a layout shows a subset, in its own order.
PANELS: Final = ("book", "order_entry", "trades", "candles", "depth", "account", "positions",
                 "open_orders", "fills", "income")
MAX_LEVERAGE: Final = 100
MAX_DOCUMENT_BYTES: Final = 2_048


@dataclass(frozen=True, slots=True)
class Settings:
    """One person's settings; the defaults are what a person who never saved any sees."""

    theme: str = "dark"
    units: str = "whole"
    panels: tuple[str, ...] = PANELS
    default_leverage: int = 10
    default_margin_mode: str = "cross"
    default_order_type: str = "limit"
    candle_interval: str = "1m"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["panels"] = list(self.panels)
        return body

    def shows(self, panel: str) -> bool:
        return panel in self.panels


FIELDS: Final = frozenset(Settings.__dataclass_fields__)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConsoleError(ConsoleCode.SETTINGS_INVALID,
                           f"{name} was {json.dumps(value)[:40]}, must be one of {', '.join(allowed)}")
    return value


def _panels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > len(PANELS):
        raise ConsoleError(ConsoleCode.SETTINGS_INVALID,
                           f"panels must be a non-empty list of at most {len(PANELS)} panel names")
    for name in value:
        _choice("a panel", name, PANELS)
    if len(set(value)) != len(value):
        raise ConsoleError(ConsoleCode.SETTINGS_INVALID, "panels lists a panel twice")
    return tuple(value)


def _leverage(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LEVERAGE:
        raise ConsoleError(ConsoleCode.SETTINGS_INVALID,
                           f"default_leverage was {json.dumps(value)[:40]}, must be a whole number "
                           f"from 1 to {MAX_LEVERAGE}")
    return value


_PARSERS: Final[dict[str, Callable[[Any], Any]]] = {
    "theme": lambda v: _choice("theme", v, THEMES),
    "units": lambda v: _choice("units", v, UNITS),
    "panels": _panels,
    "default_leverage": _leverage,
    "default_margin_mode": lambda v: _choice("default_margin_mode", v, MARGIN_MODES),
    "default_order_type": lambda v: _choice("default_order_type", v, ORDER_TYPES),
    "candle_interval": lambda v: _choice("candle_interval", v, CANDLE_INTERVALS),
}
assert set(_PARSERS) == FIELDS, "every settings field has a parser"


def parse_settings(base: Settings, change: Any) -> Settings:
    """Return ``base`` with ``change`` (a JSON object of some fields) applied; refuse it whole."""
    if not isinstance(change, dict):
        raise ConsoleError(ConsoleCode.SETTINGS_INVALID, "settings are a JSON object")
    unknown = sorted(set(change) - FIELDS)
    if unknown:
        raise ConsoleError(ConsoleCode.SETTINGS_FIELD_UNKNOWN,
                           f"unknown settings field(s): {', '.join(u[:32] for u in unknown[:5])}; "
                           f"known: {', '.join(sorted(FIELDS))}")
    return replace(base, **{name: _PARSERS[name](value) for name, value in change.items()})


def _from_stored(text: str) -> Settings:
    """Read a stored document; a field a newer release dropped or renamed falls back to its default."""
    stored = json.loads(text)
    known = {k: v for k, v in stored.items() if k in FIELDS}
    try:
        return parse_settings(Settings(), known)
    except ConsoleError:
        return Settings()


class SettingsStore:
    """Each user's settings, one row per user."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def get(self, username: str) -> Settings:
        with self._sessions() as session:
            row = session.get(UserSettings, username)
            return Settings() if row is None else _from_stored(row.document)

    def update(self, username: str, change: Any) -> Settings:
        """Apply ``change`` to the user's settings (validated whole first) and store them."""
        with self._sessions.begin() as session:
            row = session.get(UserSettings, username, with_for_update=True)
            current = Settings() if row is None else _from_stored(row.document)
            updated = parse_settings(current, change)
            document = json.dumps(updated.to_json(), separators=(",", ":"), sort_keys=True)
            assert len(document) <= MAX_DOCUMENT_BYTES, "a valid settings document is small"
            if row is None:
                session.add(UserSettings(username=username, document=document, updated_ms=self._clock()))
            else:
                row.document, row.updated_ms = document, self._clock()
        return updated
