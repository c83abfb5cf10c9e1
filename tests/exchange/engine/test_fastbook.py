"""The C matching core (FastBook) emits the pure core's events and state, byte for byte.

The extension is built into a scratch directory when the one next to the
source is missing or stale (gcc is part of the toolchain here), so these
tests always exercise C; `fastbook.use()` points FastBook at it.
"""

import gc
import io
import random
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from engine_streams import ACCOUNTS, INSTRUMENT, random_command, random_stream, streams
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.engine import fastbook
from exchange.engine.fastbook import FastBook
from exchange.engine.instrument import Instrument
from exchange.engine.messages import (
    Accepted,
    Amend,
    Amended,
    BookRequest,
    Cancel,
    CancelAll,
    Cancelled,
    Command,
    Malformed,
    NewOrder,
    PriceUpdate,
    SetReference,
    Trade,
)
from exchange.engine.orderbook import OrderBook
from exchange.engine.replay import ReplayError, parse_line, replay

_encoder = msgspec.json.Encoder()


@pytest.fixture(scope="module")
def ccore(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    module = fastbook.load()
    if module is not None:
        return module
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler to build exchange/engine/_ccore.c")
    path = fastbook.build(Path(tmp_path_factory.mktemp("ccore")))
    return fastbook.load_from(path)


@pytest.fixture(autouse=True)
def on_c_core(ccore: ModuleType) -> Iterator[None]:
    previous = fastbook._module
    fastbook.use(ccore)
    yield
    fastbook.use(previous)


def _hot(rng: random.Random, recent: list[str]) -> Command:
    """A command the C core runs itself (no stops)."""
    while True:
        cmd = random_command(rng, recent)
        if isinstance(cmd, NewOrder) and cmd.type.startswith("stop"):
            continue
        return cmd


def _hot_stream(seed: int, length: int) -> list[Command]:
    rng = random.Random(seed)
    recent: list[str] = []
    out: list[Command] = []
    for _ in range(length):
        cmd = _hot(rng, recent)
        if isinstance(cmd, NewOrder):
            recent.append(cmd.id)
        out.append(cmd)
    return out


def _run_both(commands: list[Command], instrument: Instrument = INSTRUMENT) -> FastBook:
    pure = OrderBook(instrument)
    fast = FastBook(instrument)
    for step, cmd in enumerate(commands):
        want = _encoder.encode_lines(pure.submit(cmd))
        got = _encoder.encode_lines(fast.submit(cmd))
        assert got == want, f"step {step}: {cmd!r}"
        fast.validate_internal_state()
        assert fast.seq == pure.seq
    assert fast.state_hash() == pure.state_hash()
    assert _encoder.encode(fast.state()) == _encoder.encode(pure.state())
    assert fast.best_bid() == pure.best_bid() and fast.best_ask() == pure.best_ask()
    assert len(fast.orders) == len(pure.orders)
    assert sorted(fast.orders) == sorted(pure.orders)
    return fast


def test_fastbook_hot_random_streams_emit_the_pure_cores_events_and_state() -> None:
    for seed in range(600):
        book = _run_both(_hot_stream(seed, 60))
        assert book.core == "c"


def test_fastbook_full_random_streams_move_to_pure_and_stay_identical() -> None:
    moved = 0
    for seed in range(300):
        book = _run_both(random_stream(seed, 60))
        moved += book.core == "pure"
    assert moved > 0


def test_fastbook_deep_book_with_sweeps_matches_the_pure_core() -> None:
    rng = random.Random(11)
    instrument = Instrument(symbol="DEEP")
    commands: list[Command] = []
    for i in range(20_000):
        r = rng.random()
        if r < 0.3 and i > 10:
            commands.append(Cancel(f"o{rng.randrange(i)}"))
        elif r < 0.31:
            commands.append(CancelAll(rng.choice(ACCOUNTS)))
        elif r < 0.36:
            commands.append(NewOrder(f"o{i}", rng.choice(ACCOUNTS), rng.choice(("buy", "sell")),
                                     rng.randint(20, 400), type="market"))
        else:
            side = rng.choice(("buy", "sell"))
            price = rng.randrange(900, 1100)
            commands.append(NewOrder(f"o{i}", rng.choice(ACCOUNTS), side, rng.randint(1, 30),
                                     price=price, stp=rng.choice((None, "cancel_maker"))))
    pure = OrderBook(instrument)
    fast = FastBook(instrument)
    for start in range(0, len(commands), 997):
        chunk = commands[start:start + 997]
        pure.process_many(chunk)
        fast.process_many(chunk)
        assert _encoder.encode_lines(fast.take_events()) == _encoder.encode_lines(
            pure.take_events())
        fast.validate_internal_state()
    assert fast.core == "c"
    assert fast.state_hash() == pure.state_hash()


commands_strategy = st.lists(
    st.one_of(
        st.builds(
            NewOrder,
            st.sampled_from(["o1", "o2", "o3", "o4", "o5", "", "x" * 65]),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(["buy", "sell", "hold"]),
            st.integers(-1, 25),
            type=st.sampled_from(["limit", "limit", "market", "iceberg"]),
            price=st.one_of(st.none(), st.integers(955, 1045), st.integers(-2, 0),
                            st.just(2**63)),
            tif=st.sampled_from(["GTC", "GTC", "IOC", "FOK", "POST_ONLY", "DAY"]),
            stp=st.sampled_from([None, None, "cancel_taker", "cancel_maker", "cancel_both",
                                 "nope"]),
        ),
        st.builds(Cancel, st.sampled_from(["o1", "o2", "o3", "o4", "o5", "o9"]),
                  account=st.sampled_from([None, *ACCOUNTS])),
        st.builds(CancelAll, st.sampled_from(ACCOUNTS)),
        st.builds(Amend, st.sampled_from(["o1", "o2", "o3", "o9"]),
                  qty=st.one_of(st.none(), st.integers(-1, 25), st.just(2**64)),
                  price=st.one_of(st.none(), st.integers(955, 1045), st.just(-(2**64))),
                  account=st.sampled_from([None, *ACCOUNTS])),
        st.builds(PriceUpdate, st.sampled_from(["last", "mark", "index"]),
                  st.integers(-1, 1100)),
        st.builds(SetReference, st.integers(-1, 1100)),
        st.builds(BookRequest, st.integers(0, 4)),
        st.builds(Malformed, st.integers(1, 9), st.just("bad json"),
                  st.sampled_from([None, "o1"])),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(commands_strategy)
def test_fastbook_hypothesis_streams_are_byte_identical_to_the_pure_core(
    stream: list[Command],
) -> None:
    book = _run_both(stream)
    assert book.core == "c"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.data())
def test_fastbook_restored_from_state_continues_like_the_pure_core(
    seed: int, data: st.DataObject
) -> None:
    stream = _hot_stream(seed, 60)
    cut = data.draw(st.integers(0, len(stream)))
    pure = OrderBook(INSTRUMENT)
    pure.process_many(stream[:cut])
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(pure.state()), type=type(pure.state()))
    fast = FastBook.from_state(state)
    assert fast.core == "c"
    assert fast.state_hash() == pure.state_hash()
    pure.take_events()
    for cmd in stream[cut:]:
        assert _encoder.encode_lines(fast.submit(cmd)) == _encoder.encode_lines(pure.submit(cmd))
    assert fast.state_hash() == pure.state_hash()


def test_fastbook_process_many_equals_process_one_by_one() -> None:
    stream = random_stream(77, 2_000)
    one = FastBook(INSTRUMENT)
    for cmd in stream:
        one.process(cmd)
    many = FastBook(INSTRUMENT)
    many.process_many(stream)
    assert _encoder.encode_lines(one.events) == _encoder.encode_lines(many.events)
    assert one.state_hash() == many.state_hash()


def test_fastbook_replay_batches_keep_the_events_list_object() -> None:
    book = FastBook(INSTRUMENT)
    events = book.events
    book.process(NewOrder("a", "a", "buy", 1, price=1000))
    book.process(NewOrder("s", "a", "buy", 1, type="stop_market", trigger_price=1010))
    book.process(NewOrder("b", "b", "sell", 1, price=1000))
    assert book.core == "pure"
    assert [type(e).__name__ for e in events] == ["Accepted", "Accepted", "Accepted", "Trade"]


def test_fastbook_orders_view_reports_resting_orders() -> None:
    book = FastBook(INSTRUMENT)
    book.process(NewOrder("a", "acct", "buy", 3, price=998))
    book.process(NewOrder("b", "acct", "sell", 2, price=1004, tif="POST_ONLY"))
    assert len(book.orders) == 2 and "a" in book.orders and "zz" not in book.orders
    order = book.orders["b"]
    assert (order.id, order.account, order.is_buy, order.price, order.qty, order.post_only) == (
        "b", "acct", False, 1004, 2, True)
    assert book.orders.get("zz") is None
    assert book.depth_snapshot(5).bids == [(998, 3, 1)]


def test_fastbook_ignores_a_build_of_another_source(
    ccore: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastbook, "source_sha256", lambda: "0" * 64)
    with pytest.raises(ImportError, match="another version"):
        fastbook.load_from(Path(ccore.__file__))


def test_fastbook_instrument_beyond_c_limits_runs_on_the_pure_core() -> None:
    big = Instrument(symbol="BIG", max_qty=2**61)
    book = FastBook(big)
    assert book.core == "pure"
    book.process(NewOrder("a", "acct", "buy", 2**60, price=10))
    assert book.orders["a"].qty == 2**60



def _replay_lines(lines: list[bytes], skip_invalid: bool, encoded: bool = False
                  ) -> tuple[bytes, str | None]:
    out = io.BytesIO()
    try:
        replay(lines, out, FastBook(INSTRUMENT, encoded_events=encoded),
               skip_invalid=skip_invalid)
    except ReplayError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def _line_by_line(lines: list[bytes], skip_invalid: bool) -> tuple[bytes, str | None]:
    """The reference: one decode per line, one process() per command."""
    book = OrderBook(INSTRUMENT)
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            cmd = parse_line(line_no, line, skip_invalid)
        except ReplayError as exc:
            return _encoder.encode_lines(book.events), str(exc)
        book.process(cmd)
    return _encoder.encode_lines(book.events), None


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("odd", [
    b'{"op":"cancel","id":"o1"}{"op":"cancel","id":"o2"}\n',
    b'{"op":"cancel","id":"o1"} {"op":"cancel","id":"o2"}\n',
    b'{"op":"cancel",\n',
    b'"id":"o2"}\n',
    b"\n",
    b'  {"op":"cancel","id":"o3"}\r\n',
    b'{"op":"nope"}\n',
])
def test_replay_chunked_decoding_keeps_line_by_line_semantics(odd: bytes, skip_invalid: bool) -> None:
    good = [_encoder.encode(c) + b"\n" for c in _hot_stream(5, 3000)]
    lines = [*good[:1500], odd, *good[1500:]]
    want = _line_by_line(lines, skip_invalid)
    assert _replay_lines(lines, skip_invalid) == want
    assert _replay_lines(lines, skip_invalid, encoded=True) == want


@pytest.mark.parametrize("in_c", [True, False])
def test_jsonl_lines_counts_only_plain_object_lines(in_c: bool) -> None:
    if not in_c:
        fastbook.use(None)  # the fallback; the autouse fixture restores the C core
    jsonl_lines = fastbook.jsonl_lines
    assert jsonl_lines(b'{"a":1}\n{}\n') == 2
    assert jsonl_lines(b'{"a":1}\n\n') == -1
    assert jsonl_lines(b'{"a":1} \n') == -1
    assert jsonl_lines(b' {"a":1}\n') == -1
    assert jsonl_lines(b'{"a":\n1}\n') == -1


def test_fastbook_process_captured_before_the_move_reaches_the_pure_core() -> None:
    book = FastBook(INSTRUMENT)
    process = book.process
    process(NewOrder("a", "a", "buy", 1, price=1000))
    process(Amend("a", qty=2))
    assert book.core == "c"
    process(NewOrder("s", "a", "buy", 1, type="stop_market", trigger_price=1010))
    assert book.core == "pure"
    process(NewOrder("b", "b", "sell", 2, price=1000))
    assert [type(e).__name__ for e in book.events] == [
        "Accepted", "Amended", "Accepted", "Accepted", "Trade"]
    assert len(book.orders) == 0


def test_fastbook_is_freed_by_the_cycle_collector() -> None:
    book = FastBook(INSTRUMENT)
    book.process(NewOrder("a", "a", "buy", 1, price=1000))
    ref = weakref.ref(book)
    del book
    gc.collect()
    assert ref() is None


def test_fastbook_restores_a_state_outside_c_limits_on_the_pure_core() -> None:
    pure = OrderBook(INSTRUMENT)
    pure.process(NewOrder("a", "acct", "buy", 5, price=1000))
    state = pure.state()
    odd = msgspec.structs.replace(state, bids=[msgspec.structs.replace(state.bids[0], stp=7)])
    book = FastBook.from_state(odd)
    assert book.core == "pure"
    assert book.state_hash() == OrderBook.from_state(odd).state_hash()


odd_text = st.one_of(st.sampled_from(["o1", "o2", "o3", 'q"1', "b\\s", "tab\t", "\u00e9t\u00e9", "\x7f",
                                      "x" * 15, "y" * 16, "\U0001f600", "o1 "]),
                     st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.builds(NewOrder, odd_text, odd_text, st.sampled_from(["buy", "sell"]), st.integers(1, 20),
              type=st.sampled_from(["limit", "limit", "market"]),
              price=st.one_of(st.none(), st.integers(960, 1040)),
              tif=st.sampled_from(["GTC", "IOC", "FOK", "POST_ONLY"]),
              stp=st.sampled_from([None, "cancel_maker", "cancel_both"]),
              ts=st.one_of(st.integers(-(2**70), 2**70), st.just(True), st.text(max_size=3))),
    st.builds(Cancel, odd_text, account=st.one_of(st.none(), odd_text)),
    st.builds(CancelAll, odd_text),
    st.builds(Amend, odd_text, qty=st.one_of(st.none(), st.integers(0, 25)),
              price=st.one_of(st.none(), st.integers(960, 1040))),
    st.builds(PriceUpdate, st.sampled_from(["last", "mark"]), st.integers(-1, 1100)),
    st.builds(Malformed, st.integers(1, 9), odd_text, st.one_of(st.none(), odd_text)),
), min_size=1, max_size=60))
def test_fastbook_encoded_events_are_the_bytes_msgspec_writes(stream: list[Command]) -> None:
    pure = OrderBook(INSTRUMENT)
    fast = FastBook(INSTRUMENT, encoded_events=True)
    for cmd in stream:
        pure.process(cmd)
        fast.process(cmd)
    assert fast.take_encoded() == _encoder.encode_lines(pure.take_events())
    assert fast.state_hash() == pure.state_hash()
    assert fast.take_encoded() == b""


def test_fastbook_encoded_events_keep_their_order_across_the_move_to_pure() -> None:
    stream = random_stream(3, 400)
    pure = OrderBook(INSTRUMENT)
    fast = FastBook(INSTRUMENT, encoded_events=True)
    out = b""
    for i, cmd in enumerate(stream):
        pure.process(cmd)
        fast.process(cmd)
        if i % 7 == 0:
            out += fast.take_encoded()
    assert fast.core == "pure"
    assert out + fast.take_encoded() == _encoder.encode_lines(pure.take_events())


@settings(max_examples=200, deadline=None)
@given(streams)
def test_fastbook_conserves_quantity_and_stays_uncrossed(stream: list[Command]) -> None:
    """ordered (incl. amends) = filled + cancelled + resting, for every order, on the C core."""
    book = FastBook(INSTRUMENT)
    open_qty: dict[str, int] = {}
    for cmd in stream:
        for event in book.submit(cmd):
            if isinstance(event, Accepted):
                assert event.id not in open_qty
                open_qty[event.id] = event.qty
            elif isinstance(event, Trade):
                for oid in (event.maker, event.taker):
                    open_qty[oid] -= event.qty
                    assert open_qty[oid] >= 0
                    if open_qty[oid] == 0:
                        del open_qty[oid]
            elif isinstance(event, Cancelled):
                assert open_qty.pop(event.id) == event.qty
            elif isinstance(event, Amended):
                open_qty[event.id] = event.qty
        book.validate_internal_state()
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is None or ask is None or bid < ask
    live = {o.id: o.qty for o in book.orders.values()} | {s.id: s.qty for s in book.stops.values()}
    assert open_qty == live
