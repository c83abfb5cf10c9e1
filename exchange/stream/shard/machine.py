"""The clearing shard's state machine: a whole venue driven by its command stream (pure).

Every process that needs a shard's state runs one of these on the same
stream: the shard worker (leader, publishes the results), its standbys, the
API gateways (read replicas that answer their own requests), the feeder.
The venue is deterministic, and everything a command's outcome depends on
travels in the stream with it, so every replica computes the same results,
the same ledger posting ids and the same state hash:

- the **clock**: the largest ``ts_ms`` applied so far (the appenders'
  clocks), never the replica's own; before each command, the funding
  intervals, expiries and dead man's switches due at that clock run first,
  exactly as the embedded shell does before each API call
  (exchange/service.py);
- **trading limits** (KYC tier, jurisdiction caps): the appender attaches
  the user's limits to the order, and the check (exchange/risk/entitlements.py)
  runs here, against the state in force at the order's place in the stream;
- **collateral deposits**: the ledger decides whether the spot balance covers
  one (a pending transfer, placed before the append); the command carries
  its reference, and applying it posts that pending transfer. A tombstone
  (VoidDeposit) decides, in stream order, a reservation whose command never
  came.

A command the venue refuses (margin, halted market, invalid values) is a
result with a code and changes nothing. Postings are drained after every
command, so their ids depend on the stream alone, not on batching.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from exchange.commands import Advance, AmendOrder, Place, Tick, VenueCommand
from exchange.controls import ControlError, MarketClosed, MarketControls
from exchange.engine.messages import Event
from exchange.instruments import ExchangeConfig
from exchange.recovery import VenueSnapshot, config_hash
from exchange.risk import entitlements
from exchange.risk.clearing import isolated_parent
from exchange.risk.codes import RiskCode
from exchange.stream.shard.wire import (
    DEPOSIT_REF_PATTERN,
    FundedDeposit,
    ShardCommand,
    ShardResult,
    VoidDeposit,
    WirePosting,
    command_decoder,
)
from exchange.stream.topology import check_symbol
from exchange.venue import InvalidCommand, OrderResult, Venue

log = logging.getLogger("strongroom.shard")

BAD_COMMAND: Final = 3101  # exchange.stream.publisher.StreamCode.BAD_COMMAND
INTERNAL_ERROR: Final = 3199  # a bug in the venue; the result is the same on every replica
DEPOSIT_VOIDED: Final = 3110  # a FundedDeposit whose reservation the reconciler voided first
MAX_MESSAGE: Final = 200


class StreamGap(Exception):
    """A command was offered out of sequence (the caller must read the stream in order)."""


class SnapshotCorrupt(Exception):
    """A shard snapshot does not decode, is for another shard or config, or misses its hash."""


class ShardSnapshot(msgspec.Struct, frozen=True):
    """A shard machine after command ``seq``: the venue snapshot plus the shard's own state."""

    shard: str
    seq: int
    clock_ms: int
    venue: VenueSnapshot
    deposits_applied: list[str]
    deposits_voided: list[str]


@dataclass(frozen=True, slots=True)
class Applied:
    """One command's wire result and, for the local caller, what the venue method returned."""

    result: ShardResult
    value: object


class _Collector:
    """The venue tap of a machine: gathers the engine events of the running command.

    It forwards to ``inner`` (e.g. the market-data read model of a gateway replica).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []
        self.inner: Any = None

    def ran(self, symbol: str, cmd: Any, events: list[Event]) -> None:
        self.events.extend((symbol, e) for e in events)
        if self.inner is not None:
            self.inner.ran(symbol, cmd, events)

    def drained(self, events: list[Any]) -> None:
        if self.inner is not None:
            self.inner.drained(events)


class ShardMachine:
    """A shard's venue plus its clock and deposit references, applied in stream order."""

    def __init__(self, config: ExchangeConfig, shard: str, venue: Venue | None = None) -> None:
        self.config = config
        self.shard = check_symbol(shard)
        self.venue = venue if venue is not None else Venue(config, namespace=f"s.{shard}")
        self.seq = 0
        self.clock_ms = 0
        self.deposits_applied: set[str] = set()
        self.deposits_voided: set[str] = set()
        self._tap = _Collector()
        self.venue.tap = self._tap

    # ------------------------------------------------------------------ read models

    def attach(self, tap: Any) -> None:
        """Feed ``tap`` (a VenueTap, e.g. MarketData) with every engine command the venue runs."""
        self._tap.inner = tap

    # ------------------------------------------------------------------ applying

    def apply(self, seq: int, data: bytes) -> ShardResult:
        """Apply command ``seq`` (the next one) and return its result."""
        return self.apply_full(seq, data).result

    def apply_many(self, commands: list[tuple[int, bytes]]) -> list[ShardResult]:
        """Apply consecutive commands; return their results in order."""
        return [self.apply_full(seq, data).result for seq, data in commands]

    def apply_full(self, seq: int, data: bytes) -> Applied:
        """Apply command ``seq``; return its result and the venue method's return value."""
        if seq != self.seq + 1:
            raise StreamGap(f"shard {self.shard}: command {self.seq + 1} expected, got {seq}")
        self.seq = seq
        tap = self._tap
        tap.events = []
        try:
            command = command_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Applied(ShardResult(seq, BAD_COMMAND, _short(f"command does not decode: {exc}"),
                                       [], [], []), None)
        venue = self.venue
        if type(command.ts_ms) is int and command.ts_ms > self.clock_ms:
            self.clock_ms = command.ts_ms
        if venue.now_ms < self.clock_ms:
            # The venue's own time moves only on ticks and advances. Every command runs at the
            # shard clock instead, so an order is judged at the latest time the stream has seen:
            # a stale index refuses it whatever its own stamp (older, or none), and a quote
            # already applied is never "from the future" for it (an order stamped before the
            # feeder's round but stored among its quotes would see too few fresh sources).
            venue.now_ms = self.clock_ms
        value: object = None
        code, message = 0, ""
        # Funding, expiries and dead man's switches due at the clock run first and belong to
        # this command's result even if the command itself is then refused.
        due_effects = (0, 0)
        try:
            if venue.due(self.clock_ms):
                venue.advance(self.clock_ms)
                due_effects = (len(venue.clearing.postings), len(tap.events))
            code, message, value = self._run(command)
        except (InvalidCommand, ControlError, MarketClosed) as exc:
            code, message = int(exc.code), _short(exc.message)
        except (KeyError, ValueError, TypeError) as exc:
            # The venue validates before it changes anything: unknown symbol or account,
            # a value it cannot hold. Refused the same way on every replica.
            code, message = BAD_COMMAND, _short(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # A venue bug. Every replica hits it identically, so they stay equal; the
            # shard only stops if the platform identities no longer hold.
            log.exception("shard %s: command %d raised", self.shard, seq)
            venue.clearing.check_invariants()
            code, message = INTERNAL_ERROR, _short(f"internal error: {type(exc).__name__}")
        own_effects = (len(venue.clearing.postings) > due_effects[0]
                       or len(tap.events) > due_effects[1])
        postings, risk = venue.drain()
        if code and own_effects:
            # A refusal after partial effects would be a venue bug; keep the record honest.
            log.error("shard %s: refused command %d still produced effects", self.shard, seq)
        return Applied(ShardResult(seq, code, message, tap.events, [_wire(p) for p in postings],
                                   [e.to_dict() for e in risk]), value)

    def _run(self, command: ShardCommand) -> tuple[int, str, object]:
        cmd = command.cmd
        venue = self.venue
        t = type(cmd)
        if t is FundedDeposit:
            return self._funded_deposit(cmd)  # type: ignore[arg-type]
        if t is VoidDeposit:
            return self._void_deposit(cmd)  # type: ignore[arg-type]
        if (t is Tick or t is Advance) and cmd.now_ms < self.clock_ms:  # type: ignore[union-attr]
            # Never back in time (a deposed or skewed feeder): settlement TWAP samples must be
            # in time order, and the index is computed at the clock the orders are judged at.
            cmd = msgspec.structs.replace(cmd, now_ms=self.clock_ms)
        if command.limits is not None and command.user is not None:
            refusal = self._entitlement(command, cmd)  # type: ignore[arg-type]
            if refusal[0]:
                return int(refusal[0]), refusal[1], None
        if t is Place:
            result = venue.place(cmd.symbol, cmd.order)  # type: ignore[union-attr]
            return int(result.code), result.message, result
        value = venue.execute(cmd)  # type: ignore[arg-type]
        if isinstance(value, OrderResult):
            return int(value.code), value.message, value
        if isinstance(value, RiskCode) and value:
            return int(value), value.reason, value
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], RiskCode) and value[0]:
            return int(value[0]), str(value[1]), value
        return 0, "", value

    def _entitlement(self, command: ShardCommand, cmd: VenueCommand) -> tuple[RiskCode, str]:
        ch, user, limits = self.venue.clearing, command.user, command.limits
        assert user is not None and limits is not None
        if type(cmd) is Place:
            if cmd.symbol not in self.venue.books:
                return RiskCode.OK, ""  # the venue names the unknown instrument
            owner = cmd.order.account
            if owner != user and isolated_parent(owner) != user:
                return RiskCode.TRADING_NOT_PERMITTED, "order account is not the user's"
            return entitlements.order_refusal(ch, user, cmd.symbol, cmd.order, limits)
        if type(cmd) is AmendOrder:
            return entitlements.amend_refusal(ch, user, cmd.symbol, cmd.amend.id, cmd.amend.qty,
                                              limits)
        return RiskCode.OK, ""

    def _funded_deposit(self, cmd: FundedDeposit) -> tuple[int, str, object]:
        ref = cmd.ref
        if not isinstance(ref, str) or not DEPOSIT_REF_PATTERN.fullmatch(ref):
            return BAD_COMMAND, f"deposit reference was {ref!r:.60}, not a reservation id", None
        if ref in self.deposits_applied:
            return 0, "already applied", None  # a retried append past the duplicate window
        if ref in self.deposits_voided:
            return DEPOSIT_VOIDED, f"deposit {ref} was voided before it arrived", None
        if (type(cmd.amount) is not int or cmd.amount <= 0 or not isinstance(cmd.account, str)
                or not cmd.account):
            return BAD_COMMAND, "deposit needs an account and a positive integer amount", None
        venue = self.venue
        venue.deposit(cmd.account, cmd.amount)
        # The venue queued spot -> collateral as a plain transfer; the ledger already holds
        # it as the pending reservation ``ref``: post that instead (same id, same amount).
        postings = venue.clearing.postings
        tid, _, debit, credit, amount, _ = postings[-1]
        postings[-1] = (tid, "post", debit, credit, amount, ref)
        self.deposits_applied.add(ref)
        return 0, "", None

    def _void_deposit(self, cmd: VoidDeposit) -> tuple[int, str, object]:
        ref = cmd.ref
        if not isinstance(ref, str) or not DEPOSIT_REF_PATTERN.fullmatch(ref):
            return BAD_COMMAND, f"deposit reference was {ref!r:.60}, not a reservation id", None
        if ref in self.deposits_applied or ref in self.deposits_voided:
            return 0, "nothing to void", None
        self.deposits_voided.add(ref)
        ch = self.venue.clearing
        ch.begin()
        ch.postings.append((f"{ch.ns}.{ch.seq}.v", "void", "", "", 0, ref))
        return 0, "", None

    # ------------------------------------------------------------------ state

    def state_hash(self) -> str:
        """Return the SHA-256 (hex) of the venue's state hash, the clock and the deposit sets."""
        h = hashlib.sha256(self.venue.state_hash().encode())
        h.update(msgspec.msgpack.encode([self.clock_ms, sorted(self.deposits_applied),
                                         sorted(self.deposits_voided)]))
        return h.hexdigest()

    def snapshot(self) -> bytes:
        """Return the machine after ``seq`` as msgpack (venue snapshot with its hash)."""
        venue = self.venue
        body = VenueSnapshot(self.seq, venue.state_hash(), config_hash(self.config), venue.state(),
                             venue.controls_state())
        return msgspec.msgpack.encode(ShardSnapshot(self.shard, self.seq, self.clock_ms, body,
                                                    sorted(self.deposits_applied),
                                                    sorted(self.deposits_voided)))

    @classmethod
    def restore(cls, config: ExchangeConfig, shard: str, data: bytes) -> ShardMachine:
        """Rebuild a machine from ``snapshot()`` output; refuse a mismatching or corrupt one."""
        try:
            snap = msgspec.msgpack.decode(data, type=ShardSnapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotCorrupt(f"shard snapshot does not decode: {exc}") from exc
        if snap.shard != shard:
            raise SnapshotCorrupt(f"snapshot is of shard {snap.shard!r}, not {shard!r}")
        if snap.venue.config_hash != config_hash(config):
            raise SnapshotCorrupt(f"snapshot of {shard} was taken under another instrument config")
        try:
            venue = Venue.from_state(config, snap.venue.state)
            if snap.venue.controls is not None:
                venue.controls = MarketControls.from_state(snap.venue.controls)
        except (ValueError, KeyError) as exc:
            raise SnapshotCorrupt(f"snapshot of {shard} does not rebuild: {exc}") from exc
        if venue.state_hash() != snap.venue.state_hash:
            raise SnapshotCorrupt(f"snapshot of {shard} does not reproduce its state hash")
        machine = cls(config, shard, venue)
        machine.seq, machine.clock_ms = snap.seq, snap.clock_ms
        machine.deposits_applied = set(snap.deposits_applied)
        machine.deposits_voided = set(snap.deposits_voided)
        return machine


def _wire(p: tuple[str, str, str, str, int, str | None]) -> WirePosting:
    return (p[0], p[1], p[2], p[3], p[4], p[5])


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
