"""The compiled (Cython) core and the pure-Python core are interchangeable.

scripts/build-engine.sh runs the whole engine suite once per core and sets
STRONGROOM_ENGINE_EXPECT_CORE so a silently missing (or stale, hence
ignored) build fails instead of quietly testing the pure core twice. When
the compiled core is active, the tests below also run both cores side by
side and require identical events, byte for byte, and identical state.
"""

import importlib.util
import os
import random
import sys
import types
from pathlib import Path

import msgspec
import pytest
from engine_streams import INSTRUMENT, random_stream

import exchange.engine.orderbook as orderbook
from exchange.engine.instrument import Instrument
from exchange.engine.messages import Cancel, Command, NewOrder, PriceUpdate

_encoder = msgspec.json.Encoder()

compiled_only = pytest.mark.skipif(orderbook.CORE != "cython", reason="compiled core not built")


def _pure_module() -> types.ModuleType:
    """Load orderbook.py under another name: it then keeps its pure classes."""
    name = "exchange.engine._orderbook_pure_for_tests"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(orderbook.__file__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _run_both(commands: list[Command], instrument: Instrument, market_data: bool) -> None:
    pure = _pure_module().OrderBook(instrument, market_data=market_data)
    fast = orderbook.OrderBook(instrument, market_data=market_data)
    assert type(pure) is not type(fast)
    for step, cmd in enumerate(commands):
        want = _encoder.encode_lines(pure.submit(cmd))
        got = _encoder.encode_lines(fast.submit(cmd))
        assert got == want, f"step {step}: {cmd!r}"
        fast.validate_internal_state()
    assert fast.state_hash() == pure.state_hash()
    assert _encoder.encode(fast.state()) == _encoder.encode(pure.state())


def test_core_is_the_one_the_build_script_expects() -> None:
    expected = os.environ.get("STRONGROOM_ENGINE_EXPECT_CORE")
    if expected is None:
        pytest.skip("STRONGROOM_ENGINE_EXPECT_CORE not set (scripts/build-engine.sh test sets it)")
    assert expected == orderbook.CORE


@compiled_only
@pytest.mark.parametrize("market_data", [False, True])
def test_compiled_core_emits_the_pure_cores_events_on_random_streams(market_data: bool) -> None:
    for seed in range(400):
        _run_both(random_stream(seed, 60), INSTRUMENT, market_data)


@compiled_only
def test_compiled_core_emits_the_pure_cores_events_on_a_deep_book() -> None:
    rng = random.Random(7)
    commands: list[Command] = []
    for i in range(20_000):
        r = rng.random()
        if r < 0.3 and i > 10:
            commands.append(Cancel(f"o{rng.randrange(i)}"))
        elif r < 0.32:
            commands.append(PriceUpdate("last", rng.randrange(900, 1100)))
        else:
            side = "buy" if rng.random() < 0.5 else "sell"
            offset = rng.randint(-5, 60)
            price = 1000 - offset if side == "buy" else 1000 + offset
            kind = "market" if r > 0.97 else "limit"
            commands.append(NewOrder(
                f"o{i}", f"a{rng.randrange(5)}", side, rng.randint(1, 10), type=kind,
                price=price if kind == "limit" else None,
                tif=rng.choice(("GTC", "GTC", "GTC", "IOC", "FOK", "POST_ONLY"))
                if kind == "limit" else "GTC",
                stp=rng.choice((None, None, "cancel_taker", "cancel_maker", "cancel_both")),
            ))
    _run_both(commands, Instrument(symbol="DEEP"), False)


@compiled_only
def test_compiled_core_handles_quantities_beyond_64_bit_level_totals() -> None:
    big = 2**62
    instrument = Instrument(symbol="BIG", max_qty=big)
    commands: list[Command] = [
        NewOrder("a", "x", "sell", big, price=100),
        NewOrder("b", "y", "sell", big, price=100),
        NewOrder("c", "z", "sell", big, price=100),
        NewOrder("d", "w", "buy", big, type="market"),
    ]
    _run_both(commands, instrument, True)


@compiled_only
def test_compiled_core_restores_from_pure_state() -> None:
    pure = _pure_module().OrderBook(INSTRUMENT)
    for cmd in random_stream(99, 300):
        pure.process(cmd)
    restored = orderbook.OrderBook.from_state(pure.state())
    assert restored.state_hash() == pure.state_hash()


@pytest.mark.parametrize("market_data", [False, True])
def test_process_many_emits_the_events_of_process_one_by_one(market_data: bool) -> None:
    for seed in range(60):
        commands = random_stream(seed, 80)
        one = orderbook.OrderBook(INSTRUMENT, market_data=market_data)
        for cmd in commands:
            one.process(cmd)
        many = orderbook.OrderBook(INSTRUMENT, market_data=market_data)
        many.process_many(commands[:35])
        many.process_many([])
        many.process_many(commands[35:])
        many.validate_internal_state()
        assert _encoder.encode_lines(many.take_events()) == _encoder.encode_lines(one.take_events())
        assert many.state_hash() == one.state_hash()


def test_new_order_fields_are_in_the_order_the_core_unpacks_them() -> None:
    # _on_new unpacks msgspec.structs.astuple(NewOrder) positionally; the module
    # refuses to import when the fields change, and this names the coupling.
    assert NewOrder.__struct_fields__ == orderbook._NEW_ORDER_FIELDS
