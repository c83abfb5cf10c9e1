"""Fast paths for the ledger's batch writes and id look-ups, per dialect.

A batch of thousands of transfers is the ledger's hot path. The ORM's bulk
helpers issue one statement per row; here PostgreSQL gets ``COPY`` for the
journal rows and a single array-driven ``UPDATE`` for balances, and SQLite the
driver's C ``executemany``. Both still run inside the caller's transaction, so
atomicity is unchanged.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from custody.ledger.entry import Entry, TransferKind

TRANSFER_COLUMNS = (
    "seq", "id", "kind", "debit_account_id", "credit_account_id", "asset", "amount",
    "pending_id", "timeout_s", "expires_ms", "code", "reference", "timestamp_ms", "prev_hash", "hash",
    "actor", "account_owner", "account_kind", "account_flags",
)
BALANCE_COLUMNS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


# Every SQL string below is assembled from the constants above and placeholders,
# never from caller data, hence the S608 suppressions.


# Below this many transfers a batch allocates too little for the cyclic collector to matter.
GC_PAUSE_MIN_BATCH = 256
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def collector_paused(size: int) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch of ``size`` transfers is built and written.

    A full batch allocates ~10 container objects per transfer (requests' results,
    entries, rows), which sets off a young-generation collection every few hundred
    transfers, each walking the batch built so far: a quarter of the batch's CPU.
    Nothing on this path makes reference cycles, so reference counting frees all of
    it; the collector resumes (if it was running) when the last concurrent batch
    ends, so other threads' cyclic garbage waits at most one batch.
    """
    global _gc_pausers, _gc_was_enabled
    if size < GC_PAUSE_MIN_BATCH:
        yield
        return
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _dbapi(session: Session) -> Any:
    return session.connection().connection.dbapi_connection


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_entries(session: Session, created: Sequence[tuple[Entry, str, str]]) -> None:
    """Append journal rows (entry, prev_hash, hash) in one round trip."""
    postgres = _is_postgres(session)
    # SQLite stores U256 amounts as canonical decimal strings (see custody.money).
    amount = int if postgres else str
    rows = [
        (e.seq, e.id, e.kind.value, e.debit_account, e.credit_account, e.asset, amount(e.amount),
         e.pending_id, e.timeout_s, e.expires_ms, e.code, e.reference, e.timestamp_ms, prev, entry_hash,
         e.actor, e.account_owner, e.account_kind, e.account_flags)
        for e, prev, entry_hash in created
    ]
    columns = ", ".join(TRANSFER_COLUMNS)
    cursor = _dbapi(session).cursor()
    try:
        if postgres:
            with cursor.copy(f"COPY ledger_transfers ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in TRANSFER_COLUMNS)
            cursor.executemany(f"INSERT INTO ledger_transfers ({columns}) VALUES ({marks})", rows)  # noqa: S608
    finally:
        cursor.close()


def update_balances(session: Session, accounts: Sequence[Any]) -> None:
    """Write the running totals and last_seq of the given account states."""
    if not accounts:
        return
    cursor = _dbapi(session).cursor()
    try:
        if _is_postgres(session):
            cursor.execute(
                "UPDATE ledger_accounts AS a SET debits_pending = v.dp, debits_posted = v.dq, "
                "credits_pending = v.cp, credits_posted = v.cq, last_seq = v.ls "
                "FROM (SELECT unnest(%s::integer[]) AS id, unnest(%s::numeric[]) AS dp, "
                "unnest(%s::numeric[]) AS dq, unnest(%s::numeric[]) AS cp, "
                "unnest(%s::numeric[]) AS cq, unnest(%s::bigint[]) AS ls) AS v WHERE a.id = v.id",
                [[a.id for a in accounts], [a.debits_pending for a in accounts],
                 [a.debits_posted for a in accounts], [a.credits_pending for a in accounts],
                 [a.credits_posted for a in accounts], [a.last_seq for a in accounts]],
            )
        else:
            cursor.executemany(
                "UPDATE ledger_accounts SET debits_pending = ?, debits_posted = ?, "
                "credits_pending = ?, credits_posted = ?, last_seq = ? WHERE id = ?",
                [(str(a.debits_pending), str(a.debits_posted), str(a.credits_pending),
                  str(a.credits_posted), a.last_seq, a.id) for a in accounts],
            )
    finally:
        cursor.close()


def existing_ids(session: Session, column: str, ids: Sequence[str], chunk: int) -> list[tuple[Any, ...]]:
    """Return rows of ledger_transfers whose ``column`` is one of ``ids`` (whole rows)."""
    if not ids:
        return []
    assert column in ("id", "pending_id")
    cursor = _dbapi(session).cursor()
    found: list[tuple[Any, ...]] = []
    columns = ", ".join(TRANSFER_COLUMNS)
    try:
        if _is_postgres(session):
            # prepare=False: a cached generic plan made while the journal was small would keep
            # scanning it whole as it grows; a fresh plan uses the unique index.
            cursor.execute(f"SELECT {columns} FROM ledger_transfers WHERE {column} = ANY(%s)",  # noqa: S608
                           [list(ids)], prepare=False)
            found.extend(cursor.fetchall())
        else:
            for start in range(0, len(ids), chunk):
                part = ids[start:start + chunk]
                marks = ", ".join("?" for _ in part)
                cursor.execute(f"SELECT {columns} FROM ledger_transfers WHERE {column} IN ({marks})", part)  # noqa: S608
                found.extend(cursor.fetchall())
    finally:
        cursor.close()
    return found


def entry_from_row(row: Sequence[Any]) -> tuple[Entry, str]:
    """Build an Entry (and its hash) from a raw ledger_transfers row in TRANSFER_COLUMNS order."""
    return Entry(
        seq=int(row[0]), id=row[1], kind=TransferKind(row[2]), debit_account=int(row[3]),
        credit_account=int(row[4]), asset=row[5], amount=int(row[6]), pending_id=row[7],
        timeout_s=int(row[8]), expires_ms=None if row[9] is None else int(row[9]), code=int(row[10]),
        reference=row[11], timestamp_ms=int(row[12]), actor=row[15], account_owner=row[16],
        account_kind=row[17], account_flags=None if row[18] is None else int(row[18]),
    ), row[14]
