"""PostgreSQL's batch path (pipelined reads, COPY + one balance/head statement) writes exactly
what SQLite's statement-by-statement path writes: the same entries, hashes, results, balances.

The two dialects share the pure core (custody/ledger/posting.py) but not the I/O, so one
seeded stream of exchange-like batches (holds, voids, posts, fees, retries, refusals, linked
failures, expiries) is replayed on both and compared byte for byte.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from custody.db import make_engine, make_session_factory
from custody.ledger.codes import LedgerCode
from custody.ledger.entry import GENESIS_HASH, AccountKind, TransferKind, chain_hash
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger, TransferResult

from .helpers import funded_user, single, sums_by_asset

TRADERS = 6
SEEDS = (1, 2, 3)


class _Clock:
    """A settable millisecond clock: both replays see the same timestamps."""

    def __init__(self) -> None:
        self.now_ms = 1_767_225_600_000

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def _accounts(ledger: Ledger) -> dict[str, int]:
    ids = {"fees": ledger.create_account("platform", "USDC", AccountKind.FEES).id,
           "clearing": ledger.create_account("clearing", "USDC", AccountKind.USER_MARGIN).id,
           "src": ledger.create_account("funding", "USDC", AccountKind.EXTERNAL).id,
           "eth": ledger.create_account("eth-holder", "ETH", AccountKind.USER_AVAILABLE).id}
    for t in range(TRADERS):
        ids[f"m{t}"] = ledger.create_account(f"t{t}", "USDC", AccountKind.USER_MARGIN).id
        ids[f"h{t}"] = ledger.create_account(f"t{t}", "USDC", AccountKind.USER_HELD).id
        ids[f"a{t}"] = ledger.create_account(f"t{t}", "USDC", AccountKind.USER_AVAILABLE).id
    return ids


def _stream(rng: random.Random, ids: dict[str, int]) -> Iterator[TransferRequest]:
    """Yield exchange-like requests, some of them refused on purpose."""
    holds: dict[int, str] = {}
    pendings: list[str] = []
    sent: list[TransferRequest] = []
    n = 0
    while True:
        n += 1
        t = rng.randrange(TRADERS)
        m, h, a = ids[f"m{t}"], ids[f"h{t}"], ids[f"a{t}"]
        roll = rng.random()
        if roll < 0.25:
            previous = holds.pop(t, None)
            if previous is not None:
                req = TransferRequest(id=f"hv{n}", kind=TransferKind.VOID, pending_id=previous, code=7)
            else:
                holds[t] = f"h{n}"
                req = TransferRequest(id=f"h{n}", kind=TransferKind.PENDING, debit_account=m,
                                      credit_account=h, amount=rng.randrange(1, 500), code=7,
                                      timeout_s=rng.choice((0, 0, 60)))
        elif roll < 0.45:
            req = single(f"f{n}", m, ids["fees"], rng.randrange(1, 50), code=7)
        elif roll < 0.6:
            pair = (m, ids["clearing"]) if rng.random() < 0.5 else (ids["clearing"], m)
            req = single(f"p{n}", *pair, rng.randrange(1, 900), asset="USDC")
        elif roll < 0.72:
            # Spot to margin, two-phase; may exceed the spot balance (insufficient_funds).
            pendings.append(f"d{n}")
            req = TransferRequest(id=f"d{n}", kind=TransferKind.PENDING, debit_account=a,
                                  credit_account=m, amount=rng.randrange(1, 4_000),
                                  reference=rng.choice(("", "deposit", "dépôt \u2713")))
        elif roll < 0.84 and pendings:
            target = rng.choice(pendings)  # may already be resolved or expired: refused then
            if rng.random() < 0.5:
                req = TransferRequest(id=f"dp{n}", kind=TransferKind.POST, pending_id=target,
                                      amount=rng.choice((None, 1, 10**9)))
            else:
                req = TransferRequest(id=f"dv{n}", kind=TransferKind.VOID, pending_id=target)
        elif roll < 0.95 and sent:
            old = rng.choice(sent)  # a retry: exists, or exists with different fields
            req = old if rng.random() < 0.6 else TransferRequest(
                id=old.id, kind=TransferKind.SINGLE, debit_account=m, credit_account=ids["fees"],
                amount=1)
        else:
            req = rng.choice((
                single(f"x{n}", m, 2**70, 5),  # no such account, far outside any id column
                single(f"x{n}", m, 987_654, 5),  # no such account
                single(f"x{n}", ids["eth"], m, 5),  # asset mismatch
                single(f"x{n}", ids["fees"], m, 10**12),  # fees may not go below zero
                TransferRequest(id=f"x{n}", kind=TransferKind.POST, pending_id=f"f{n - 1}"),
                TransferRequest(id=f"x{n}", kind=TransferKind.VOID, pending_id="nowhere"),
                single(f"x{n}", m, h, 0),  # invalid amount
            ))
        sent.append(req)
        yield req


def _replay(url: str, seed: int) -> tuple[list[list[tuple[str, str, object, str]]], list[object],
                                          list[tuple[object, ...]]]:
    """Replay the seeded stream; return per-batch results, the journal, all balances."""
    clock = _Clock()
    engine = make_engine(url)
    ledger = Ledger(make_session_factory(engine), clock=clock)
    try:
        ids = _accounts(ledger)
        funding = [single(f"fund{t}", ids["src"], ids[f"a{t}"], 20_000) for t in range(TRADERS)]
        funding.append(single("fund-eth", ledger.create_account("eth-src", "ETH",
                                                                AccountKind.EXTERNAL).id,
                              ids["eth"], 100))
        ledger.submit(funding)
        rng = random.Random(seed)
        stream = _stream(rng, ids)
        outcomes: list[list[tuple[str, str, object, str]]] = []
        for b in range(40):
            batch = [next(stream) for _ in range(rng.choice((1, 2, 7, 16, 40)))]
            results: list[TransferResult] = ledger.submit(batch, linked=rng.random() < 0.5,
                                                          actor=f"service:shard{b % 2}")
            outcomes.append([(r.id, r.status.value, r.code, r.message) for r in results])
            clock.advance(rng.choice((1, 1_000, 30_000)))
            if b % 10 == 9:
                ledger.expire_pending()
        journal = ledger.journal(limit=1000)
        balances = [(a.id, a.owner, a.kind, a.balance, a.last_seq) for a in ledger.list_accounts()]
        assert sums_by_asset(ledger) == {"USDC": (0, 0), "ETH": (0, 0)}
        return outcomes, journal, balances
    finally:
        engine.dispose()


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_paths_postgres_and_sqlite_write_byte_identical_journals(
    seed: int, sqlite_url: str, postgres_url: str
) -> None:
    on_sqlite = _replay(sqlite_url, seed)
    on_postgres = _replay(postgres_url, seed)
    outcomes, journal, _ = on_sqlite
    # The stream exercised what it is for: creations, retries, refusals and linked failures.
    flat = [o for batch in outcomes for o in batch]
    statuses = {status for _, status, _, _ in flat}
    codes = {code for _, _, code, _ in flat}
    assert statuses == {"created", "exists", "failed"}
    assert {LedgerCode.LINKED_TRANSFER_FAILED, LedgerCode.UNKNOWN_ACCOUNT,
            LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS} <= codes
    assert {e.kind for e, _ in journal} == set(TransferKind)
    assert on_postgres[0] == outcomes
    assert [(e.to_bytes(), h) for e, h in on_postgres[1]] == [(e.to_bytes(), h) for e, h in journal]
    assert on_postgres[2] == on_sqlite[2]
    tip = GENESIS_HASH
    for entry, entry_hash in on_postgres[1]:
        tip = chain_hash(tip, entry.to_bytes())
        assert entry_hash == tip


def _blocked_on_a_lock(engine: object, database: str) -> bool:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND wait_event_type = 'Lock'"),
            {"d": database}).scalar())


def test_batch_postgres_reads_balances_only_after_the_head_lock_is_granted(
    postgres_url: str
) -> None:
    """A batch queued behind the head lock sees what the lock holder commits, not an older snapshot."""
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    ledger = Ledger(sessions)
    user, _ = funded_user(ledger, "payer", "USDC", 100)
    sink = ledger.create_account("payee", "USDC", AccountKind.USER_AVAILABLE).id
    other_engine = make_engine(postgres_url)
    other = Ledger(make_session_factory(other_engine))
    late: list[list[TransferResult]] = []
    try:
        with sessions.begin() as session:
            first = ledger.submit_in(session, [single("first", user.id, sink, 80)])
            assert first[0].ok
            racer = threading.Thread(target=lambda: late.append(other.submit(
                [single("second", user.id, sink, 80), single("third", user.id, sink, 20)],
                linked=True)))
            racer.start()
            deadline = time.monotonic() + 60
            while not _blocked_on_a_lock(engine, engine.url.database):
                assert time.monotonic() < deadline, "the second writer never queued on the head lock"
                time.sleep(0.02)
        racer.join(timeout=60)
        assert not racer.is_alive()
        results = late[0]
        assert [r.code for r in results] == [LedgerCode.INSUFFICIENT_FUNDS,
                                             LedgerCode.LINKED_TRANSFER_FAILED]
        assert ledger.balance(user.id).credit_balance_posted == 20
        assert ledger.head()[0] == max(e.seq for e, _ in ledger.journal())
    finally:
        other_engine.dispose()
        engine.dispose()


def test_batch_postgres_database_failure_under_the_lock_raises_sqlalchemy_error_and_writes_nothing(
    postgres_url: str
) -> None:
    """A driver error in the pipelined path is an SQLAlchemyError, which callers retry on."""
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    ledger = Ledger(sessions)
    user, _ = funded_user(ledger, "payer", "USDC", 100)
    sink = ledger.create_account("payee", "USDC", AccountKind.USER_AVAILABLE).id
    head = ledger.head()
    try:
        with sessions.begin() as holder:
            assert ledger.submit_in(holder, [single("held", user.id, sink, 1)])[0].ok
            with pytest.raises(OperationalError), sessions.begin() as session:
                # The head is locked by ``holder``: the pipeline's lock statement times out.
                session.execute(text("SET LOCAL lock_timeout = '100ms'"))
                ledger.submit_in(session, [single("blocked", user.id, sink, 5)])
            holder.rollback()
        assert ledger.head() == head
        assert ledger.balance(user.id).credit_balance_posted == 100
        assert ledger.submit([single("after", user.id, sink, 5)])[0].ok
    finally:
        engine.dispose()
