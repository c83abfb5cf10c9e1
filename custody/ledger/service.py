"""The database-backed ledger: one transaction per command, serialised appends, idempotent ids.

Every write locks the single ``ledger_head`` row (``SELECT ... FOR UPDATE`` on
PostgreSQL; ``BEGIN IMMEDIATE`` already serialises SQLite writers), so the
journal has one total order, the hash chain never forks, and a balance read
inside the transaction cannot be spent twice by a concurrent writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.util import identity_key

from custody.assets import get_asset
from custody.ledger import bulk
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import (
    ACCOUNT_OWNER_PATTERN,
    DEFAULT_FLAGS,
    EXPIRY_ACTOR,
    SERVICE_ACTOR,
    AccountFlags,
    AccountKind,
    Entry,
    TransferKind,
    chain_hash,
    valid_actor,
)
from custody.ledger.models import LedgerAccount, LedgerHead, LedgerTransfer
from custody.ledger.posting import (
    AccountState,
    PendingState,
    TransferRequest,
    apply_transfer,
    expire,
    open_account,
    request_matches_entry,
    validate_request_shape,
)

# TigerBeetle's batch size: large enough to amortise a commit, small enough to bound a transaction.
MAX_BATCH = 8190
HISTORY_PAGE_MAX = 1000
EXPIRE_BATCH_MAX = 1000
# SQLite allows 32766 bound parameters per statement; stay far below it.
IN_CLAUSE_CHUNK = 900
HEAD_ID = 1
ACCOUNT_ID_MIN, ACCOUNT_ID_MAX = -(2**63), 2**63 - 1
OWNER_PATTERN = ACCOUNT_OWNER_PATTERN


def wall_clock_ms() -> int:
    """Return the current Unix time in milliseconds (the default clock at the edge)."""
    return time.time_ns() // 1_000_000


class ResultStatus(StrEnum):
    """How one transfer of a submission ended."""

    CREATED = "created"
    EXISTS = "exists"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TransferResult:
    """The outcome of one request in a submission."""

    index: int
    id: str
    status: ResultStatus
    entry: Entry | None = None
    code: LedgerCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Tell whether the transfer is now in the journal (created now or before)."""
        return self.status is not ResultStatus.FAILED


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's running totals, in minor units."""

    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def credit_balance_posted(self) -> int:
        """Return posted credits minus posted debits (what a liability account holds)."""
        return self.credits_posted - self.debits_posted

    @property
    def credit_balance_available(self) -> int:
        """Return the credit balance less pending debits (what the owner can still spend)."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def debit_balance_posted(self) -> int:
        """Return posted debits minus posted credits (what an asset account holds)."""
        return self.debits_posted - self.credits_posted


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account and its balances as read from the database."""

    id: int
    owner: str
    asset: str
    kind: AccountKind
    flags: AccountFlags
    created_ms: int
    balance: Balance
    last_seq: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of an account's journal entries, oldest first, with the cursor for the next page."""

    entries: list[Entry]
    next_cursor: int | None


class Ledger:
    """The ledger service: accounts, transfers, balances and history."""

    def __init__(
        self, sessions: sessionmaker[Session], clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    # -- accounts ---------------------------------------------------------------------------

    def create_account(
        self, owner: str, asset: str, kind: str, flags: int | None = None, *,
        actor: str = SERVICE_ACTOR,
    ) -> AccountView:
        """Open an account and journal its terms in a hash-chained ``open`` entry.

        Flags default to the kind's constraint; any other value is refused, so an
        account's constraint always follows from its kind (docs/ledger-format.md).
        """
        _check_actor(actor)
        account_kind = _validate_account(owner, asset, kind, flags)
        account_flags = int(DEFAULT_FLAGS[account_kind])
        try:
            with self._sessions.begin() as session:
                head = _lock_head(session)
                now_ms = self._clock()
                row = LedgerAccount(
                    owner=owner, asset=asset, kind=account_kind.value, flags=account_flags,
                    created_ms=now_ms, debits_pending=0, debits_posted=0, credits_pending=0,
                    credits_posted=0, last_seq=head.seq + 1,
                )
                session.add(row)
                session.flush()
                entry = open_account(row.id, owner, asset, account_kind.value, account_flags,
                                     seq=head.seq + 1, now_ms=now_ms, actor=actor)
                entry_hash = chain_hash(head.hash, entry.to_bytes())
                bulk.insert_entries(session, [(entry, head.hash, entry_hash)])
                session.execute(update(LedgerHead).where(LedgerHead.id == HEAD_ID)
                                .values(seq=entry.seq, hash=entry_hash))
        except IntegrityError as exc:
            raise LedgerError(LedgerCode.ACCOUNT_EXISTS,
                              f"{owner} already has a {account_kind.value} {asset} account") from exc
        return _account_view(row)

    def ensure_account(
        self, owner: str, asset: str, kind: str, *, actor: str = SERVICE_ACTOR
    ) -> AccountView:
        """Return the (owner, asset, kind) account, creating it with default flags if absent."""
        found = self.find_account(owner, asset, kind)
        if found is not None:
            return found
        try:
            return self.create_account(owner, asset, kind, actor=actor)
        except LedgerError as exc:
            if exc.code is not LedgerCode.ACCOUNT_EXISTS:
                raise
            found = self.find_account(owner, asset, kind)
            assert found is not None
            return found

    def find_account(self, owner: str, asset: str, kind: str) -> AccountView | None:
        """Return the (owner, asset, kind) account or None."""
        with self._sessions() as session:
            row = session.scalar(select(LedgerAccount).where(
                LedgerAccount.owner == owner, LedgerAccount.asset == asset,
                LedgerAccount.kind == kind))
            return None if row is None else _account_view(row)

    def get_account(self, account_id: int) -> AccountView:
        """Return one account with its balances, or raise unknown_account."""
        with self._sessions() as session:
            row = session.get(LedgerAccount, account_id)
            if row is None:
                raise LedgerError(LedgerCode.UNKNOWN_ACCOUNT, f"account {account_id} does not exist")
            return _account_view(row)

    def list_accounts(self, owner: str | None = None) -> list[AccountView]:
        """Return all accounts (of ``owner`` if given), by id."""
        query = select(LedgerAccount).order_by(LedgerAccount.id)
        if owner is not None:
            query = query.where(LedgerAccount.owner == owner)
        with self._sessions() as session:
            return [_account_view(row) for row in session.scalars(query)]

    def balance(self, account_id: int) -> Balance:
        """Return an account's balances; a primary-key read, independent of history length."""
        return self.get_account(account_id).balance

    # -- transfers --------------------------------------------------------------------------

    def transfer(self, request: TransferRequest, *, actor: str = SERVICE_ACTOR) -> TransferResult:
        """Submit one transfer on behalf of ``actor``; raise :class:`LedgerError` if refused."""
        result = self.submit([request], actor=actor)[0]
        if result.code is not None:
            raise LedgerError(result.code, result.message)
        return result

    def submit(
        self, requests: Sequence[TransferRequest], *, linked: bool = False,
        actor: str = SERVICE_ACTOR,
    ) -> list[TransferResult]:
        """Apply a batch in one database transaction and return one result per request.

        Unlinked: each request succeeds or fails on its own. Linked: all succeed or
        none is applied, and the others report ``linked_transfer_failed``. Every
        entry written records ``actor`` (``user:<id>`` or ``service:<name>``) in its
        hash-chained bytes; a retry that finds the entry already written does not
        change the recorded actor.
        """
        _check_batch(requests, actor)
        failures = _shape_failures(requests)
        if linked and failures:
            return _linked_failure(requests, failures)
        with bulk.collector_paused(len(requests)), self._sessions.begin() as session:
            results = self._apply_batch(session, requests, failures, linked=linked, actor=actor)
        if linked and any(not r.ok for r in results):
            # _apply_batch wrote nothing, so the committed transaction changed nothing.
            return _linked_failure(requests, {r.index: r for r in results if not r.ok})
        return results

    def submit_in(
        self, session: Session, requests: Sequence[TransferRequest], *, actor: str = SERVICE_ACTOR,
    ) -> list[TransferResult]:
        """Apply unlinked ``requests`` inside the caller's open transaction ``session``.

        For a service whose own rows must commit or roll back together with its
        ledger entries (a withdrawal and its hold): nothing is written unless the
        caller commits. The journal head stays locked until then.
        """
        _check_batch(requests, actor)
        with bulk.collector_paused(len(requests)):
            return self._apply_batch(session, requests, _shape_failures(requests), linked=False,
                                     actor=actor)

    def _apply_batch(
        self,
        session: Session,
        requests: Sequence[TransferRequest],
        failures: dict[int, TransferResult],
        *,
        linked: bool,
        actor: str,
    ) -> list[TransferResult]:
        if bulk.is_postgres(session):
            seq, tip, existing, pendings, accounts = _read_batch_postgres(session, requests)
        else:
            head = _lock_head(session)
            existing = _load_entries(session, [r.id for r in requests])
            pendings = _load_pendings(session, [r.pending_id for r in requests if r.pending_id])
            accounts = _load_accounts(session, _account_ids(requests, pendings.values()))
            seq, tip = head.seq, head.hash
        now_ms = self._clock()
        results: list[TransferResult] = []
        created: list[tuple[Entry, str, str]] = []
        for index, req in enumerate(requests):
            # Most batches have no shape failures and no retried ids: skip those look-ups then.
            result = failures.get(index) if failures else None
            if result is None and existing:
                result = _existing_result(index, req, existing)
            if result is None:
                try:
                    entry = apply_transfer(req, accounts, pendings, seq=seq + 1, now_ms=now_ms,
                                           actor=actor)
                except LedgerError as exc:
                    result = _failed(index, req.id, exc)
                else:
                    seq += 1
                    entry_hash = chain_hash(tip, entry.to_bytes())
                    created.append((entry, tip, entry_hash))
                    tip = entry_hash
                    if entry.kind is TransferKind.PENDING:
                        pendings[entry.id] = PendingState(entry)
                    result = TransferResult(index, req.id, ResultStatus.CREATED, entry)
            results.append(result)
            if linked and not result.ok:
                break
        if created and not (linked and any(not r.ok for r in results)):
            _write(session, created, accounts, seq, tip)
        return results

    def expire_pending(
        self, limit: int = EXPIRE_BATCH_MAX, *, actor: str = EXPIRY_ACTOR
    ) -> list[Entry]:
        """Release pending transfers whose timeout has passed; return the expiry entries."""
        _check_actor(actor)
        with self._sessions.begin() as session:
            head = _lock_head(session)
            now_ms = self._clock()
            resolver = aliased(LedgerTransfer)
            rows = session.scalars(
                select(LedgerTransfer)
                .where(LedgerTransfer.kind == TransferKind.PENDING.value,
                       LedgerTransfer.expires_ms <= now_ms,
                       ~exists().where(resolver.pending_id == LedgerTransfer.id))
                .order_by(LedgerTransfer.seq).limit(limit)
            ).all()
            pendings = [PendingState(_entry(row)) for row in rows]
            accounts = _load_accounts(session, _account_ids([], pendings))
            seq, tip = head.seq, head.hash
            created: list[tuple[Entry, str, str]] = []
            for pending in pendings:
                seq += 1
                entry = expire(pending, accounts, seq=seq, now_ms=now_ms, actor=actor)
                entry_hash = chain_hash(tip, entry.to_bytes())
                created.append((entry, tip, entry_hash))
                tip = entry_hash
            if created:
                _write(session, created, accounts, seq, tip)
            return [entry for entry, _, _ in created]

    # -- reads ------------------------------------------------------------------------------

    def get_transfer(self, transfer_id: str) -> Entry:
        """Return the journal entry with caller id ``transfer_id``."""
        with self._sessions() as session:
            row = session.scalar(select(LedgerTransfer).where(LedgerTransfer.id == transfer_id))
            if row is None:
                raise LedgerError(LedgerCode.TRANSFER_NOT_FOUND,
                                  f"transfer {transfer_id!r} does not exist")
            return _entry(row)

    def history(self, account_id: int, *, after_seq: int = 0, limit: int = 100) -> HistoryPage:
        """Return an account's transfers with ``seq > after_seq``, oldest first.

        The account's ``open`` entry is in the journal, not in its transfer history.
        """
        if not 1 <= limit <= HISTORY_PAGE_MAX:
            raise LedgerError(LedgerCode.INVALID_FIELD,
                              f"limit was {limit}, must be 1..{HISTORY_PAGE_MAX}")
        if after_seq < 0:
            raise LedgerError(LedgerCode.INVALID_CURSOR, f"cursor was {after_seq}, must be >= 0")
        self.get_account(account_id)
        with self._sessions() as session:
            rows = session.scalars(
                select(LedgerTransfer)
                .where((LedgerTransfer.debit_account_id == account_id)
                       | (LedgerTransfer.credit_account_id == account_id),
                       LedgerTransfer.seq > after_seq,
                       LedgerTransfer.kind != TransferKind.OPEN.value)
                .order_by(LedgerTransfer.seq).limit(limit + 1)
            ).all()
        entries = [_entry(row) for row in rows[:limit]]
        return HistoryPage(entries, entries[-1].seq if len(rows) > limit else None)

    def journal(self, *, after_seq: int = 0, limit: int = HISTORY_PAGE_MAX) -> list[tuple[Entry, str]]:
        """Return journal entries with their chain hashes, in sequence order."""
        with self._sessions() as session:
            rows = session.scalars(
                select(LedgerTransfer).where(LedgerTransfer.seq > after_seq)
                .order_by(LedgerTransfer.seq).limit(limit)
            ).all()
            return [(_entry(row), row.hash) for row in rows]

    def head(self) -> tuple[int, str]:
        """Return the journal's last sequence number and hash."""
        with self._sessions() as session:
            head = session.get(LedgerHead, HEAD_ID)
            if head is None:
                raise RuntimeError("ledger_head row is missing: run `strongroom migrate`")
            return head.seq, head.hash


# -- helpers ---------------------------------------------------------------------------------

def _check_batch(requests: Sequence[TransferRequest], actor: str) -> None:
    """Refuse a bad actor, an empty batch or one above MAX_BATCH before anything is opened."""
    _check_actor(actor)
    if not requests:
        raise LedgerError(LedgerCode.BATCH_EMPTY, "a batch must hold at least one transfer")
    if len(requests) > MAX_BATCH:
        raise LedgerError(LedgerCode.BATCH_TOO_LARGE,
                          f"batch held {len(requests)} transfers, at most {MAX_BATCH} allowed")


def _check_actor(actor: str) -> None:
    if not valid_actor(actor):
        raise LedgerError(LedgerCode.INVALID_ACTOR,
                          f"actor was {str(actor)[:140]!r}, must be user:<id or name> or "
                          "service:<name> (1-128 characters of [A-Za-z0-9._:@-] after the colon)")


def _validate_account(owner: str, asset: str, kind: str, flags: int | None) -> AccountKind:
    if not isinstance(owner, str) or not OWNER_PATTERN.fullmatch(owner):
        raise LedgerError(LedgerCode.INVALID_OWNER,
                          f"owner was {str(owner)[:140]!r}, must be 1-128 characters of "
                          "[A-Za-z0-9._:@-]")
    if not isinstance(asset, str) or get_asset(asset) is None:
        raise LedgerError(LedgerCode.UNKNOWN_ASSET, f"asset was {asset!r}, not a registered asset")
    try:
        account_kind = AccountKind(kind)
    except ValueError:
        raise LedgerError(LedgerCode.INVALID_ACCOUNT_KIND,
                          f"kind was {kind!r}, must be one of "
                          f"{', '.join(k.value for k in AccountKind)}") from None
    required = int(DEFAULT_FLAGS[account_kind])
    if flags is not None and (isinstance(flags, bool) or flags != required):
        raise LedgerError(LedgerCode.INVALID_FLAGS,
                          f"flags was {str(flags)[:40]!r}, a {account_kind.value} account must have "
                          f"flags {required} (0 none, 1 debits must not exceed credits, 2 credits "
                          "must not exceed debits)")
    return account_kind


def _shape_failures(requests: Sequence[TransferRequest]) -> dict[int, TransferResult]:
    failures: dict[int, TransferResult] = {}
    seen: set[str] = set()
    for index, req in enumerate(requests):
        try:
            validate_request_shape(req)
            if req.id in seen:
                raise LedgerError(LedgerCode.DUPLICATE_ID_IN_BATCH,
                                  f"transfer id {req.id!r} appears twice in the batch")
        except LedgerError as exc:
            failures[index] = _failed(index, req.id, exc)
        seen.add(req.id)
    return failures


def _failed(index: int, transfer_id: str, exc: LedgerError) -> TransferResult:
    return TransferResult(index, transfer_id, ResultStatus.FAILED, None, exc.code, exc.message)


def _linked_failure(
    requests: Sequence[TransferRequest], failures: dict[int, TransferResult]
) -> list[TransferResult]:
    first = min(failures)
    return [
        failures[i] if i in failures else TransferResult(
            i, req.id, ResultStatus.FAILED, None, LedgerCode.LINKED_TRANSFER_FAILED,
            f"not applied: linked transfer {first} ({requests[first].id!r}) failed")
        for i, req in enumerate(requests)
    ]


def _existing_result(
    index: int, req: TransferRequest, existing: dict[str, Entry]
) -> TransferResult | None:
    entry = existing.get(req.id)
    if entry is None:
        return None
    if request_matches_entry(req, entry):
        return TransferResult(index, req.id, ResultStatus.EXISTS, entry)
    return TransferResult(index, req.id, ResultStatus.FAILED, None,
                          LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS,
                          f"transfer {req.id!r} already exists (seq {entry.seq}) with different "
                          "fields")


def _lock_head(session: Session) -> LedgerHead:
    head = session.scalar(select(LedgerHead).where(LedgerHead.id == HEAD_ID).with_for_update())
    if head is None:
        raise RuntimeError("ledger_head row is missing: run `strongroom migrate`")
    return head


def _chunks(values: Sequence[object]) -> Iterable[Sequence[object]]:
    for start in range(0, len(values), IN_CLAUSE_CHUNK):
        yield values[start:start + IN_CLAUSE_CHUNK]


def _load_entries(session: Session, ids: Sequence[str]) -> dict[str, Entry]:
    rows = bulk.existing_ids(session, "id", sorted(set(ids)), IN_CLAUSE_CHUNK)
    return {entry.id: entry for entry, _ in map(bulk.entry_from_row, rows)}


def _load_pendings(session: Session, ids: Sequence[str]) -> dict[str, PendingState]:
    pendings = {
        entry_id: PendingState(entry) for entry_id, entry in _load_entries(session, ids).items()
    }
    for row in bulk.existing_ids(session, "pending_id", sorted(pendings), IN_CLAUSE_CHUNK):
        resolver, _ = bulk.entry_from_row(row)
        assert resolver.pending_id is not None
        pendings[resolver.pending_id].resolved_by = resolver.kind
    return pendings


def _account_ids(
    requests: Sequence[TransferRequest], pendings: Iterable[PendingState]
) -> list[int]:
    ids = {r.debit_account for r in requests} | {r.credit_account for r in requests}
    for pending in pendings:
        ids.add(pending.entry.debit_account)
        ids.add(pending.entry.credit_account)
    # An id outside the database's 64-bit integers names no account (it stays unknown_account);
    # sent to SQLite it would raise OverflowError instead of being refused.
    return sorted(i for i in ids if isinstance(i, int) and not isinstance(i, bool)
                  and ACCOUNT_ID_MIN <= i <= ACCOUNT_ID_MAX)


def _load_accounts(session: Session, ids: Sequence[int]) -> dict[int, AccountState]:
    accounts: dict[int, AccountState] = {}
    a = LedgerAccount
    columns = (a.id, a.asset, a.kind, a.flags, a.debits_pending, a.debits_posted, a.credits_pending,
               a.credits_posted, a.last_seq)
    for chunk in _chunks(ids):
        # Plain rows, not ORM objects: a batch may touch thousands of accounts.
        for row in session.execute(select(*columns).where(a.id.in_(chunk))):
            _add_account(accounts, row)
    return accounts


def _add_account(accounts: dict[int, AccountState], row: Sequence[Any]) -> None:
    """Add one (id, asset, kind, flags, 4 balances, last_seq) row, refusing tampered flags."""
    account_id, asset, kind, flags, dp, dq, cp, cq, last_seq = row
    if flags != DEFAULT_FLAGS.get(kind):
        # Flags follow from the kind and triggers freeze both: a mismatch means someone
        # changed the database behind the ledger's back. Refuse to apply anything.
        raise RuntimeError(f"ledger account {account_id} has flags {flags} for kind "
                           f"{kind!r}: the account table was tampered with")
    accounts[account_id] = AccountState(
        id=account_id, asset=asset, flags=flags, debits_pending=int(dp), debits_posted=int(dq),
        credits_pending=int(cp), credits_posted=int(cq), last_seq=int(last_seq))


def _read_batch_postgres(
    session: Session, requests: Sequence[TransferRequest]
) -> tuple[int, str, dict[str, Entry], dict[str, PendingState], dict[int, AccountState]]:
    """Lock the head and load what a batch needs in one round trip (bulk.read_batch_postgres).

    Returns the same state as _lock_head, _load_entries, _load_pendings and _load_accounts
    one after another: (head seq, head hash, existing entries, pendings, accounts).
    """
    pending_ids = sorted({r.pending_id for r in requests if r.pending_id})
    rows = bulk.read_batch_postgres(session, HEAD_ID, sorted({r.id for r in requests}),
                                    pending_ids, _account_ids(requests, ()))
    if rows.head is None:
        raise RuntimeError("ledger_head row is missing: run `strongroom migrate`")
    existing = {entry.id: entry for entry, _ in map(bulk.entry_from_row, rows.existing)}
    pendings = {entry.id: PendingState(entry)
                for entry, _ in map(bulk.entry_from_row, rows.pending)}
    for row in rows.resolvers:
        resolver, _ = bulk.entry_from_row(row)
        assert resolver.pending_id is not None
        state = pendings.get(resolver.pending_id)
        if state is not None:  # a resolver always names a journal entry; never skipped in practice
            state.resolved_by = resolver.kind
    accounts: dict[int, AccountState] = {}
    for row in rows.accounts:
        _add_account(accounts, row)
    return rows.head[0], rows.head[1], existing, pendings, accounts


def _write(
    session: Session,
    created: list[tuple[Entry, str, str]],
    accounts: dict[int, AccountState],
    seq: int,
    tip: str,
) -> None:
    first_seq = created[0][0].seq
    touched = [a for a in accounts.values() if a.last_seq >= first_seq]
    if bulk.is_postgres(session):
        bulk.write_batch_postgres(session, created, touched, HEAD_ID, seq, tip)
        # The head moved behind the ORM's back: a LedgerHead this session loaded earlier
        # (expire_pending's lock) must not be reused with its old seq and hash.
        loaded = session.identity_map.get(identity_key(LedgerHead, HEAD_ID))
        if loaded is not None:
            session.expire(loaded)
        return
    bulk.insert_entries(session, created)
    bulk.update_balances(session, touched)
    session.execute(update(LedgerHead).where(LedgerHead.id == HEAD_ID).values(seq=seq, hash=tip))


def _entry(row: LedgerTransfer) -> Entry:
    return Entry(
        seq=row.seq, id=row.id, kind=TransferKind(row.kind), debit_account=row.debit_account_id,
        credit_account=row.credit_account_id, asset=row.asset, amount=row.amount,
        pending_id=row.pending_id, timeout_s=row.timeout_s, expires_ms=row.expires_ms,
        code=row.code, reference=row.reference, timestamp_ms=row.timestamp_ms, actor=row.actor,
        account_owner=row.account_owner, account_kind=row.account_kind,
        account_flags=row.account_flags,
    )


def _account_view(row: LedgerAccount) -> AccountView:
    return AccountView(
        id=row.id, owner=row.owner, asset=row.asset, kind=AccountKind(row.kind),
        flags=AccountFlags(row.flags), created_ms=row.created_ms,
        balance=Balance(row.debits_pending, row.debits_posted, row.credits_pending,
                        row.credits_posted),
        last_seq=row.last_seq,
    )
