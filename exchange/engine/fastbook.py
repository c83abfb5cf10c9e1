"""FastBook: the order book on the C matching core, with the pure core as reference and fallback.

`_ccore.c` runs the hot commands (limit and market orders of every tif and
STP mode, cancel, cancel-all, amend) on integer order handles, struct-of-arrays
storage and price levels with intrusive lists, and emits the very msgspec
events `orderbook.OrderBook` emits; tests/exchange/engine/test_fastbook.py
runs both side by side and requires identical events (byte for byte) and
an identical `state_hash()`.

Everything else is rare and stays in Python:
- price updates, reference prices, book requests and malformed lines are
  handled here without leaving the C core (the C core never holds a stop);
- the first stop order or reduce-only order (or a command whose
  fields have unexpected Python types) moves the book, once, to the pure
  core: `OrderBook.from_state(self.state())` (O(book)), and every later
  command runs there. A book with market data on, or an instrument outside
  the C limits, runs on the pure core from the start.

Build the extension (needs gcc and the Python headers)::

    python -m exchange.engine.fastbook build      # exchange/engine/_ccore.<abi>.so

The build records the SHA-256 of the C source; it is used only if it was
built from the current source, and never when STRONGROOM_ENGINE_PURE=1.
Without it FastBook is a thin shell around the pure core.
"""

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

import msgspec

from exchange.engine.codes import REASONS, ResultCode
from exchange.engine.instrument import MAX_PRICE, Instrument
from exchange.engine.messages import (
    Accepted,
    Amend,
    Amended,
    BookRequest,
    Cancel,
    CancelAll,
    Cancelled,
    Command,
    DepthSnapshot,
    Event,
    Malformed,
    NewOrder,
    PriceSet,
    PriceUpdate,
    Rejected,
    SetReference,
    Trade,
)
from exchange.engine.orderbook import (
    MAX_SNAPSHOT_DEPTH,
    PURE_ENV,
    CorruptState,
    OrderBook,
    ReduceOnlyHook,
)
from exchange.engine.state import BookState, RestingOrderState

SOURCE: Final = Path(__file__).with_name("_ccore.c")
MODULE_NAME: Final = "exchange.engine._ccore"
# A level total of MAX_LIVE_ORDERS orders must fit in int64 inside the C core.
C_MAX_QTY: Final = 900_000_000_000


def source_sha256() -> str:
    """Return the SHA-256 of the C source (recorded in every build)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def extension_path(directory: Path | None = None) -> Path:
    """Return where the built extension lives (next to the source unless `directory`)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return (directory or SOURCE.parent) / f"_ccore{suffix}"


def build(directory: Path | None = None) -> Path:
    """Compile the extension into `directory` (default: next to the source); return its path."""
    target = extension_path(directory)
    include = sysconfig.get_paths()["include"]
    compiler = os.environ.get("CC", "gcc")
    with tempfile.TemporaryDirectory(prefix="strongroom-ccore-") as work:
        built = Path(work) / target.name
        command = [compiler, "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-DNDEBUG",
                   "-Wall", f'-DCCORE_SOURCE_SHA256="{source_sha256()}"', f"-I{include}",
                   str(SOURCE), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{result.stderr}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A new inode, renamed over the old one: a process that has the old
        # build mapped keeps running it (copying over it in place would not).
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
    return target


def load_from(path: Path) -> ModuleType:
    """Import the extension at `path`; raise ImportError unless built from the current source."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if getattr(module, "SOURCE_SHA256", None) != source_sha256():
        raise ImportError(f"{path} was built from another version of {SOURCE.name}: rebuild it")
    module.configure(NewOrder, Cancel, CancelAll, Accepted, Trade, Cancelled, Rejected, REASONS)
    module.configure_amend(Amend, Amended)
    module.configure_json(_encoder.encode, tuple(
        (t, _json_fragments(t)) for t in (Accepted, Trade, Cancelled, Rejected, Amended)))
    return module


_encoder = msgspec.json.Encoder()


def _json_fragments(event_type: type[Event]) -> tuple[bytes, ...]:
    """Return what msgspec writes before each field of `event_type`: '{"type":"trade","seq":', ..."""
    config = event_type.__struct_config__
    names = event_type.__struct_fields__
    head = _encoder.encode({config.tag_field: config.tag})[:-1] + b","
    return (head + _encoder.encode(names[0]) + b":",
            *(b"," + _encoder.encode(name) + b":" for name in names[1:]))


_module: ModuleType | None = None


def use(module: ModuleType | None) -> None:
    """Make FastBooks created from now on use `module` (None: the pure core)."""
    global _module
    _module = module


def load() -> ModuleType | None:
    """Load the built extension next to the source; None if absent, stale or disabled."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    path = extension_path()
    if not path.exists():
        return None
    try:
        return load_from(path)
    except ImportError:
        return None


def active() -> bool:
    """Say whether new FastBooks run on the C core."""
    return _module is not None


def jsonl_lines(data: bytes) -> int:
    """Return the number of lines if every line of `data` (newline-terminated) is "{...}", else -1.

    In C when the core is built (one pass), else two substring counts.
    """
    module = _module
    if module is not None:
        lines: int = module.jsonl_lines(data)
        return lines
    lines = data.count(b"\n")
    if data.count(b"}\n") != lines or data.count(b"\n{") + data.startswith(b"{") != lines:
        return -1
    return lines


class RestingOrder(NamedTuple):
    """A resting order as the C core reports it (the fields of `orderbook.Order` callers read)."""

    oid: int
    id: str
    account: str
    side: str
    price: int
    qty: int
    post_only: bool
    stp: int
    reduce_only: bool

    @property
    def is_buy(self) -> bool:
        """Say whether it is a bid."""
        return self.side == "buy"


class _OrdersView(Mapping[str, RestingOrder]):
    """Read-only `orders` of a C-core book: id -> RestingOrder, in priority order."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def __getitem__(self, key: str) -> RestingOrder:
        row = self._core.get(key)
        if row is None:
            raise KeyError(key)
        return RestingOrder(*row)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._core.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._core.ids())

    def __len__(self) -> int:
        return int(self._core.live)


class FastBook:
    """An order book with `OrderBook`'s interface for replay and benchmarks, on the C core."""

    def __init__(
        self,
        instrument: Instrument,
        *,
        market_data: bool = False,
        reduce_only_hook: ReduceOnlyHook | None = None,
        encoded_events: bool = False,
    ) -> None:
        instrument.check()
        self.instrument = instrument
        self.market_data = market_data
        self.reduce_only_hook = reduce_only_hook
        self.events: list[Event] = []
        self.last_price: int | None = None
        self.mark_price: int | None = None
        self._pure: OrderBook | None = None
        self._core: Any = None
        self._encoded = encoded_events
        # The C core that writes JSON lines; kept after a move to the pure core
        # until its pending lines are taken.
        self._json_core: Any = None
        # Rejection messages come from the pure core's own wording.
        self._explainer = OrderBook(instrument)
        module = _module
        if module is None or market_data or instrument.max_qty > C_MAX_QTY:
            self._use_pure(OrderBook(instrument, market_data=market_data,
                                     reduce_only_hook=reduce_only_hook))
            return
        self._core = module.Core(
            instrument.tick_size, instrument.lot_size, instrument.min_qty, instrument.max_qty,
            instrument.band_bps or 0, self.events, self._explain,
        )
        self._core.set_reference(instrument.reference_price)
        self._core.set_paths(self._slow, None)
        if encoded_events:
            self._core.set_json(True)
            self._json_core = self._core
        # `book.process` is the C core's own method: one call per command.
        self.__dict__["process"] = self._core.process

    def _use_pure(self, pure: OrderBook) -> OrderBook:
        """Run this book on `pure` from now on (sharing the events list)."""
        pure.events = self.events
        self._pure = pure
        if self._core is not None:
            # Callers holding the old `book.process` reach the pure core too.
            self._core.set_paths(self._slow, pure.process)
            self._core = None
        self.__dict__["process"] = pure.process
        return pure

    # ------------------------------------------------------------------ API

    @property
    def core(self) -> str:
        """Return "c" while the C core runs this book, "pure" after it moved (or never had it)."""
        return "pure" if self._pure is not None else "c"

    def process(self, cmd: Command) -> None:
        """Apply one command; its events are appended to `self.events`.

        Shadowed per instance by the running core's own `process` (this body
        only documents it).
        """
        if self._pure is not None:
            self._pure.process(cmd)
        else:
            self._core.process(cmd)

    def process_many(self, cmds: Iterable[Command]) -> None:
        """Apply `cmds` in order, as `process()` on each; the C core loops over a list itself."""
        batch = cmds if isinstance(cmds, list) else list(cmds)
        i = 0
        n = len(batch)
        while i < n:
            if self._pure is not None:
                self._pure.process_many(batch[i:])
                return
            i = self._core.process_many(batch, i)
            if i < n:
                self._slow(batch[i])
                i += 1

    def take_encoded(self) -> bytes:
        """Return (and drain) the pending events as JSON lines, as `encode_lines` writes them.

        With `encoded_events=True` the C core writes its events straight as
        JSON (no event objects; msgspec's bytes for anything unusual) and this
        is the only way to read them; otherwise it encodes `events`.
        """
        data = b"" if self._json_core is None else bytes(self._json_core.take_json())
        if self.events:
            data += _encoder.encode_lines(self.events)
            self.events.clear()
        return data

    def submit(self, cmd: Command) -> list[Event]:
        """Apply one command and return (and drain) the events it produced."""
        self.process(cmd)
        return self.take_events()

    def take_events(self) -> list[Event]:
        """Return the pending events and start a new, empty list."""
        events = self.events
        self.events = []
        if self._pure is not None:
            self._pure.events = self.events
        else:
            self._core.events = self.events
        return events

    @property
    def seq(self) -> int:
        """Return the seq of the last event."""
        return self._pure.seq if self._pure is not None else int(self._core.seq)

    @property
    def next_oid(self) -> int:
        """Return the engine order number the next accepted order gets."""
        return self._pure.next_oid if self._pure is not None else int(self._core.next_oid)

    @property
    def reference_price(self) -> int | None:
        """Return the band's reference price."""
        if self._pure is not None:
            return self._pure.reference_price
        ref: int | None = self._core.reference_price
        return ref

    @property
    def orders(self) -> Mapping[str, Any]:
        """Return live resting orders by client id (a read-only view on the C core)."""
        if self._pure is not None:
            return self._pure.orders
        return _OrdersView(self._core)

    @property
    def stops(self) -> Mapping[str, Any]:
        """Return untriggered stops by client id (the C core never holds one)."""
        return self._pure.stops if self._pure is not None else {}

    def best_bid(self) -> int | None:
        """Return the best bid price, or None."""
        if self._pure is not None:
            return self._pure.best_bid()
        bid: int | None = self._core.best(True)
        return bid

    def best_ask(self) -> int | None:
        """Return the best ask price, or None."""
        if self._pure is not None:
            return self._pure.best_ask()
        ask: int | None = self._core.best(False)
        return ask

    def depth_snapshot(self, depth: int) -> DepthSnapshot:
        """Return the top `depth` L2 levels per side, tagged with the current seq."""
        if self._pure is not None:
            return self._pure.depth_snapshot(depth)
        return DepthSnapshot(self.seq, self._core.depth(True, depth),
                             self._core.depth(False, depth))

    # ------------------------------------------------------- slow commands

    def _slow(self, cmd: Command) -> None:
        """Run a command the C core handed back (it changed nothing)."""
        if isinstance(cmd, Malformed):
            self._reject(cmd.id, ResultCode.INVALID_COMMAND, f"line {cmd.line}: {cmd.error}")
        elif isinstance(cmd, BookRequest) and type(cmd.depth) is int:
            if cmd.depth <= 0 or cmd.depth > MAX_SNAPSHOT_DEPTH:
                self._reject(None, ResultCode.INVALID_COMMAND,
                             f"depth was {cmd.depth}, must be in 1..{MAX_SNAPSHOT_DEPTH}")
                return
            self._core.seq += 1
            self._core.append_event(self.depth_snapshot(cmd.depth))
        elif isinstance(cmd, PriceUpdate) and type(cmd.price) is int and type(cmd.kind) is str:
            self._on_price(cmd)
        elif isinstance(cmd, SetReference) and type(cmd.price) is int:
            if cmd.price <= 0 or cmd.price >= MAX_PRICE:
                self._reject(None, ResultCode.BAD_PRICE,
                             f"reference price was {cmd.price}, must be positive")
                return
            self._core.set_reference(cmd.price)
            self._core.seq += 1
            self._core.append_event(PriceSet(self._core.seq, "reference", cmd.price))
        else:
            self._move_to_pure().process(cmd)

    def _on_price(self, c: PriceUpdate) -> None:
        # No stop rests in the C core, so a price update triggers nothing.
        if c.kind != "last" and c.kind != "mark":
            self._reject(None, ResultCode.INVALID_COMMAND,
                         f"price kind was {c.kind!r}, must be last|mark")
            return
        if c.price <= 0 or c.price >= MAX_PRICE:
            self._reject(None, ResultCode.BAD_PRICE,
                         f"{c.kind} price was {c.price}, must be positive")
            return
        if c.kind == "last":
            self.last_price = c.price
        else:
            self.mark_price = c.price
        self._core.seq += 1
        self._core.append_event(PriceSet(self._core.seq, c.kind, c.price))

    def _reject(self, id: str | None, code: int, message: str) -> None:
        self._core.seq += 1
        self._core.append_event(Rejected(self._core.seq, id, code, REASONS[code], message))

    def _explain(self, code: int, cmd: NewOrder | Amend, price: int | None = None,
                 qty: int | None = None) -> str:
        """Return the pure core's message for rejecting `cmd` with `code` in the current state.

        For an amend, `price` and `qty` are the ones it would take (the
        order's own where the amend leaves them out).
        """
        explainer = self._explainer
        ref = self._core.reference_price
        explainer.reference_price = ref
        explainer._band_lo = self._core.band_lo  # the pure core words every rejection
        explainer._band_hi = self._core.band_hi
        if isinstance(cmd, Amend):
            assert qty is not None
            return explainer._explain_book(code, price, qty)
        return explainer._explain_new(code, cmd)

    def _move_to_pure(self) -> OrderBook:
        """Continue this book on the pure core from the C core's exact state (once, O(book))."""
        return self._use_pure(
            OrderBook.from_state(self.state(), reduce_only_hook=self.reduce_only_hook))

    # ------------------------------------------------ state and invariants

    def state(self) -> BookState:
        """Return the canonical state (identical to the pure core's for the same commands)."""
        if self._pure is not None:
            return self._pure.state()
        core = self._core
        return BookState(
            instrument=self.instrument,
            market_data=self.market_data,
            event_seq=int(core.seq),
            next_oid=int(core.next_oid),
            reference_price=core.reference_price,
            last_price=self.last_price,
            mark_price=self.mark_price,
            bids=[RestingOrderState(*row) for row in core.resting(True)],
            asks=[RestingOrderState(*row) for row in core.resting(False)],
            stops=[],
        )

    def state_hash(self) -> str:
        """Return the SHA-256 (hex) of the canonical msgpack encoding of `state()`."""
        return hashlib.sha256(msgspec.msgpack.encode(self.state())).hexdigest()

    @classmethod
    def from_state(
        cls, state: BookState, *, reduce_only_hook: ReduceOnlyHook | None = None
    ) -> "FastBook":
        """Rebuild a book from `state()` output; priority order is preserved."""
        book = cls(state.instrument, market_data=state.market_data,
                   reduce_only_hook=reduce_only_hook)
        fits = book._core is not None and not state.stops and all(
            not r.reduce_only and type(r.post_only) is bool
            for r in [*state.bids, *state.asks])
        if not fits:
            book._use_pure(OrderBook.from_state(state, reduce_only_hook=reduce_only_hook))
            return book
        core = book._core
        try:
            core.seq = state.event_seq
            core.next_oid = state.next_oid
            core.set_reference(state.reference_price)
            for r in [*state.bids, *state.asks]:
                core.rest_order(r.oid, r.id, r.account, r.side == "buy", r.price, r.qty,
                                r.post_only, r.stp)
        except (OverflowError, TypeError, ValueError):
            # Outside the C core's types or limits: the pure core takes any valid state.
            book = cls(state.instrument, market_data=state.market_data,
                       reduce_only_hook=reduce_only_hook)
            book._use_pure(OrderBook.from_state(state, reduce_only_hook=reduce_only_hook))
            return book
        book.last_price = state.last_price
        book.mark_price = state.mark_price
        return book

    def validate_internal_state(self) -> None:
        """Raise CorruptState if any invariant of the book is broken."""
        if self._pure is not None:
            self._pure.validate_internal_state()
            return
        try:
            self._core.check()
        except AssertionError as exc:
            raise CorruptState(str(exc)) from None
        if not self._encoded and self.events and self.events[-1].seq != self._core.seq:
            raise CorruptState(f"event seq {self._core.seq} out of step with emitted events")

    def memory_bytes(self) -> int:
        """Return the bytes of the C core's own storage (0 on the pure core)."""
        return 0 if self._core is None else int(self._core.memory())


def main(argv: list[str] | None = None) -> int:
    """`python -m exchange.engine.fastbook build|clean`."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["build"]:
        print(f"built {build()}")
        return 0
    if args == ["clean"]:
        extension_path().unlink(missing_ok=True)
        return 0
    print("usage: python -m exchange.engine.fastbook build|clean", file=sys.stderr)
    return 2


use(load())

if __name__ == "__main__":
    raise SystemExit(main())
