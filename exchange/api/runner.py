"""Where the exchange API runs a venue command: in this process, or in its clearing shard.

Every state-changing endpoint builds the same `VenueCommand` in both modes and
hands it to the app's runner; the endpoint formats the `Outcome` the same way,
so it is written once:

- `EmbeddedRunner` (the default, `make run`): under the service's lock, the
  trading-limits check (exchange/risk/entitlements.py), `venue.execute(cmd)`,
  then the service flushes the postings to the ledger.
- `ShardRunner` (shard mode, docs/scale-out.md "Order entry in shard mode"):
  the command is built against the shard's read replica, appended to the
  shard's command stream as a `ShardCommand` (with the time, the user and their
  limits, so the machine checks entitlements in stream order), and answered
  with this process's replica's result once it applied that sequence; no
  database on the way. `pending` (HTTP 202 with `seq`) if the replica did not
  apply it within the wait.

A builder gets the venue (the service's, or the replica's under its lock) and
returns the command(s) to run, or raises an ApiError (an unknown order, a bad
value) before anything is appended or changed. Reads go through `read` (one
instrument's venue) or `each` (every venue, concatenated).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol, TypeVar

import msgspec

from custody.api.errors import ApiError, RequestCode
from exchange.commands import AmendOrder, Place, VenueCommand
from exchange.controls import ControlError, MarketClosed
from exchange.engine.messages import Event
from exchange.risk import entitlements
from exchange.risk.codes import RiskCode
from exchange.stream.publisher import StreamCode, StreamRefused
from exchange.venue import InvalidCommand, OrderResult, Venue

T = TypeVar("T")


class ShardCode(IntEnum):
    """Refusals of the shard machine and gateway outside the risk and book ranges (31xx)."""

    BAD_COMMAND = 3101
    BAD_COMMAND_ID = 3102
    UNKNOWN_MARKET = 3103
    STREAM_UNAVAILABLE = 3104
    NOT_ROUTED = 3105
    DEPOSIT_VOIDED = 3110
    INTERNAL_ERROR = 3199


def shard_code(code: int) -> IntEnum:
    """Return the enum member of a 31xx code (an unknown one reads as bad_command)."""
    return ShardCode(code) if code in ShardCode._value2member_map_ else ShardCode.BAD_COMMAND

Build = Callable[[Venue], VenueCommand | Sequence[VenueCommand]]
# No base id contains "::" (an order id has one ':', client ids none), so a retry id is unambiguous.
RETRY_SEP = "::"
MAX_RETRY_HOPS = 16  # refused copies of one command id a retry walks past (then answers the last)
STREAM_STATUS = {StreamCode.UNKNOWN_MARKET: 404, StreamCode.STREAM_UNAVAILABLE: 503}


@dataclass(frozen=True)
class Outcome:
    """What a command did: `code` 0 or its refusal, the engine events, the command that ran.

    `value`: the venue method's return value (embedded mode only). `seq`: the command's
    stream sequence (shard mode). `pending`: shard mode, not applied by the replica in time.
    """

    code: int
    message: str
    events: list[Event]
    commands: list[VenueCommand] = field(default_factory=list)
    value: object = None
    seq: int | None = None
    pending: bool = False
    reused_id: bool = False  # shard mode: the id is the stream's for another command


class Runner(Protocol):
    """Run venue commands and read venue state, wherever the venue lives."""

    def run(self, symbol: str | None, build: Build, *, pool: str | None = None,
            user: str | None = None, limits: entitlements.TradingLimits | None = None,
            now_ms: int = 0, nonce: str | None = None) -> Outcome:
        """Build the command(s) against `symbol`'s venue and run them; stop at the first refusal.

        `pool` names a shard instead of an instrument (collateral, dead man's switch);
        neither: the default shard. The embedded mode has one venue and ignores both.
        """
        ...

    def read(self, symbol: str | None, view: Callable[[Venue], T], *, pool: str | None = None) -> T:
        """Return `view` of `symbol`'s (or `pool`'s) venue under its lock."""
        ...

    def each(self, view: Callable[[Venue], list[T]]) -> list[T]:
        """Return `view` of every venue, concatenated (one venue in embedded mode)."""
        ...

    def venues(self) -> list[str]:
        """Return the names of the venues (shards) reads can name; embedded: ["MAIN"]."""
        ...


def entitlement_check(venue: Venue, user: str | None, cmd: VenueCommand,
                      limits: entitlements.TradingLimits | None) -> tuple[RiskCode, str]:
    """The trading-limits check of an order or amend (the shard machine runs the same one)."""
    if limits is None or user is None:
        return RiskCode.OK, ""
    if type(cmd) is Place:
        if cmd.symbol not in venue.books:
            return RiskCode.OK, ""
        return entitlements.order_refusal(venue.clearing, user, cmd.symbol, cmd.order, limits)
    if type(cmd) is AmendOrder:
        return entitlements.amend_refusal(venue.clearing, user, cmd.symbol, cmd.amend.id,
                                          cmd.amend.qty, limits)
    return RiskCode.OK, ""


def _commands(built: VenueCommand | Sequence[VenueCommand]) -> list[VenueCommand]:
    return list(built) if isinstance(built, list | tuple) else [built]  # type: ignore[list-item]


def outcome_of(value: object) -> tuple[int, str, list[Event]]:
    """Return (code, message, events) of what a venue method returned (as the shard machine does)."""
    if isinstance(value, OrderResult):
        return int(value.code), value.message, list(value.events)
    if isinstance(value, RiskCode):
        return int(value), value.reason if value else "", []
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], RiskCode):
        return int(value[0]), str(value[1]) if value[0] else "", []
    if isinstance(value, list):
        return 0, "", value
    return 0, "", []


class EmbeddedRunner:
    """The in-process venue of an ExchangeService (journaled, flushed to the ledger)."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    def run(self, symbol: str | None, build: Build, *, pool: str | None = None,
            user: str | None = None, limits: entitlements.TradingLimits | None = None,
            now_ms: int = 0, nonce: str | None = None) -> Outcome:
        events: list[Event] = []
        value: object = None
        with self.svc.command() as venue:
            commands = _commands(build(venue))
            for cmd in commands:
                refused, why = entitlement_check(venue, user, cmd, limits)
                if refused:
                    return Outcome(int(refused), why, events, commands)
                try:
                    value = venue.execute(cmd)
                except (InvalidCommand, ControlError, MarketClosed) as exc:
                    return Outcome(int(exc.code), exc.message, events, commands)
                code, message, produced = outcome_of(value)
                events += produced
                if code:
                    return Outcome(code, message, events, commands, value)
        return Outcome(0, "", events, commands, value)

    def read(self, symbol: str | None, view: Callable[[Venue], T], *, pool: str | None = None) -> T:
        with self.svc.lock:
            return view(self.svc.venue)

    def each(self, view: Callable[[Venue], list[T]]) -> list[T]:
        with self.svc.lock:
            return view(self.svc.venue)

    def venues(self) -> list[str]:
        return ["MAIN"]


class ShardRunner:
    """The clearing shards through this process's ShardGateway (append, wait for the replica)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway

    def shard(self, symbol: str | None, pool: str | None = None) -> str:
        """Return the shard of `symbol` or named `pool` (neither: the default); 404 if unknown."""
        if pool is not None:
            if pool not in self.gw.replicas:
                raise ApiError(RequestCode.NOT_FOUND, f"shard was {pool[:40]!r}, not served", 404)
            return pool
        if symbol is None:
            return str(self.gw.default_shard)
        found = self.gw.shard_of.get(symbol)
        if found is None:
            raise ApiError(RiskCode.UNKNOWN_INSTRUMENT, f"symbol was {symbol[:40]!r}, not listed", 404)
        return str(found)

    def run(self, symbol: str | None, build: Build, *, pool: str | None = None,
            user: str | None = None, limits: entitlements.TradingLimits | None = None,
            now_ms: int = 0, nonce: str | None = None) -> Outcome:
        from exchange.stream.shard.wire import ShardCommand, msg_id_of

        shard = self.shard(symbol, pool)
        commands = _commands(self.gw.read(shard, build))
        events: list[Event] = []
        seq = None
        for n, cmd in enumerate(commands):
            shard_cmd = ShardCommand(cmd=cmd, ts_ms=now_ms, user=user,
                                     limits=limits if type(cmd) in (Place, AmendOrder) else None)
            # One request may append several commands: each gets its own id.
            tag = f"{nonce}.{n}" if nonce else uuid.uuid4().hex
            msg_id = msg_id_of(cmd, tag)
            sent = self._append(shard, msg_id, shard_cmd)
            seq = sent.seq
            if sent.duplicate and sent.stored is not None and not _same(sent.stored, shard_cmd):
                return Outcome(int(RiskCode.DUPLICATE_ORDER_ID),
                               f"command id {msg_id!r} was already used for another command",
                               events, commands, seq=seq, reused_id=True)
            if sent.result is None:
                return Outcome(0, "", events, commands, seq=seq, pending=True)
            events += [e for _, e in sent.result.events]
            if sent.result.code:
                return Outcome(sent.result.code, sent.result.message, events, commands, seq=seq)
        return Outcome(0, "", events, commands, seq=seq)

    def _append(self, shard: str, msg_id: str, command: Any) -> Any:
        """Append under `msg_id`; a retry of a command the shard refused is decided afresh.

        The stream stores a retried id once (its duplicate window), which is right for
        a command that took effect. One that was refused changed nothing, so its retry
        (after a deposit, a reopened market) goes in again under `<id>::<refused seq>`:
        every retry of it derives the same id, so concurrent retries are stored once too.
        """
        for _ in range(MAX_RETRY_HOPS):
            try:
                sent = self.gw.submit(shard, msg_id, command)
            except StreamRefused as exc:
                raise ApiError(exc.code, exc.message, STREAM_STATUS.get(exc.code, 400)) from None
            retry = (sent.duplicate and sent.result is not None and sent.result.code != 0
                     and sent.stored is not None and _same(sent.stored, command))
            if not retry:
                return sent
            msg_id = f"{msg_id.split(RETRY_SEP, 1)[0]}{RETRY_SEP}{sent.seq}"
        return sent

    def read(self, symbol: str | None, view: Callable[[Venue], T], *, pool: str | None = None) -> T:
        try:
            return self.gw.read(self.shard(symbol, pool), view)  # type: ignore[no-any-return]
        except StreamRefused as exc:
            raise ApiError(exc.code, exc.message, STREAM_STATUS.get(exc.code, 400)) from None

    def each(self, view: Callable[[Venue], list[T]]) -> list[T]:
        out: list[T] = []
        for shard in self.venues():
            try:
                out += self.gw.read(shard, view)
            except StreamRefused as exc:
                raise ApiError(exc.code, exc.message, STREAM_STATUS.get(exc.code, 400)) from None
        return out

    def venues(self) -> list[str]:
        return sorted(self.gw.replicas)


def _untimed(cmd: object) -> object:
    """Return `cmd` without its edge timestamps (a retried request is stamped anew)."""
    if type(cmd) is Place:
        return msgspec.structs.replace(cmd, order=msgspec.structs.replace(cmd.order, ts=0))
    if type(cmd) is AmendOrder:
        return msgspec.structs.replace(cmd, amend=msgspec.structs.replace(cmd.amend, ts=0))
    return cmd


def _same(stored: bytes, sent: Any) -> bool:
    """Tell whether the command the stream holds under an id is the one sent again (a retry)."""
    from exchange.stream.shard.wire import command_decoder

    try:
        held = command_decoder.decode(stored)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return bool(_untimed(held.cmd) == _untimed(sent.cmd) and held.user == sent.user)
