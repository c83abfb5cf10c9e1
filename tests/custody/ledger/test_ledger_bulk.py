"""The batch path's collector pause: always restores the collector, across nesting and errors."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from custody.ledger.bulk import GC_PAUSE_MIN_BATCH, collector_paused


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_collector_pause_large_batch_pauses_and_resumes() -> None:
    with collector_paused(GC_PAUSE_MIN_BATCH):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collector_pause_small_batch_leaves_the_collector_alone() -> None:
    with collector_paused(GC_PAUSE_MIN_BATCH - 1):
        assert gc.isenabled()
    assert gc.isenabled()


def test_collector_pause_nested_batches_resume_only_after_the_last() -> None:
    with collector_paused(GC_PAUSE_MIN_BATCH):
        with collector_paused(GC_PAUSE_MIN_BATCH):
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collector_pause_error_in_the_batch_still_resumes() -> None:
    with pytest.raises(RuntimeError), collector_paused(GC_PAUSE_MIN_BATCH):
        raise RuntimeError("batch failed")
    assert gc.isenabled()


def test_collector_pause_collector_disabled_by_the_application_stays_disabled() -> None:
    gc.disable()
    with collector_paused(GC_PAUSE_MIN_BATCH):
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_collector_pause_overlapping_threads_resume_after_both() -> None:
    inside, release = threading.Event(), threading.Event()

    def other_batch() -> None:
        with collector_paused(GC_PAUSE_MIN_BATCH):
            inside.set()
            release.wait(timeout=60)

    worker = threading.Thread(target=other_batch)
    with collector_paused(GC_PAUSE_MIN_BATCH):
        worker.start()
        assert inside.wait(timeout=60)
    assert not gc.isenabled()  # the other thread's batch is still running
    release.set()
    worker.join(timeout=60)
    assert gc.isenabled()
