"""The shard settlement example in docs/scale-out.md is a batch settlement writes as documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.postings import PostingWriter
from exchange.stream.shard.settle import ShardSettlement
from exchange.stream.shard.wire import batch_decoder
from tests.exchange.shard.settle_flow import fund_spot

DOC = Path(__file__).resolve().parents[3] / "docs" / "scale-out.md"


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    engine = make_engine(sqlite_url)
    yield Ledger(make_session_factory(engine))
    engine.dispose()


def test_settle_doc_batch_example_posts_one_reservation_and_voids_the_other(ledger: Ledger) -> None:
    [example] = [b.strip().encode() for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
                 if b.lstrip().startswith('{"shard":')]
    batch = batch_decoder.decode(example)
    assert batch.shard == "EU" and [p[1] for r in batch.results for p in r.postings] == ["post", "void"]
    fund_spot(ledger, "alice", 800_000_000, "spot.alice")
    eu = PostingWriter(ledger, shard="EU")
    for ref, amount in ((batch.results[0].postings[0][5], 500_000_000),
                        (batch.results[1].postings[0][5], 300_000_000)):
        ledger.transfer(TransferRequest(id=ref, kind=TransferKind.PENDING,
                                        debit_account=eu.account("a:alice"),
                                        credit_account=eu.account("m:alice"), amount=amount))
    ShardSettlement(ledger, "EU").settle([batch])
    collateral = ledger.find_account("alice@EU", "USDC", "user_margin")
    assert collateral is not None and ledger.balance(collateral.id).credit_balance_posted == 500_000_000
    spot = ledger.balance(eu.account("a:alice"))
    assert spot.credit_balance_available == 300_000_000  # the voided 300 is spendable again
