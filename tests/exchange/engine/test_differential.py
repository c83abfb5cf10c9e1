"""Differential test: the engine and the independent reference matcher agree."""

from engine_projection import final_book, project
from engine_reference import ReferenceBook
from engine_streams import INSTRUMENT, random_stream

from exchange.engine.orderbook import OrderBook

STREAMS = 3000
STREAM_LENGTH = 40


def run_both(seed: int, length: int) -> None:
    book = OrderBook(INSTRUMENT)
    ref = ReferenceBook(INSTRUMENT)
    for step, cmd in enumerate(random_stream(seed, length)):
        got = [p for p in map(project, book.submit(cmd)) if p is not None]
        want = ref.process(cmd)
        assert got == want, f"seed {seed} step {step}: {cmd!r}"
        book.validate_internal_state()
    assert final_book(book) == ref.final_book(), f"seed {seed}: final books differ"


def test_engine_matches_reference_on_thousands_of_random_streams() -> None:
    for seed in range(STREAMS):
        run_both(seed, STREAM_LENGTH)


def test_engine_matches_reference_on_long_streams() -> None:
    for seed in range(10_000, 10_010):
        run_both(seed, 1_000)
