"""Invariants of the ledger over random operation sequences (hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.ledger.codes import LedgerError
from custody.ledger.entry import AccountFlags, AccountKind, Entry, TransferKind, canonical_json
from custody.ledger.posting import (
    AccountState,
    PendingState,
    TransferRequest,
    apply_transfer,
    validate_request_shape,
)
from custody.ledger.service import Ledger

from .helpers import sums_by_asset

ACCOUNTS = 5
Op = tuple[str, int, int, int]
ops = st.lists(
    st.tuples(st.sampled_from(["single", "pending", "post", "void"]),
              st.integers(0, ACCOUNTS - 1), st.integers(0, ACCOUNTS - 1),
              st.integers(-5, 2**70)),
    min_size=1, max_size=40,
)


def _requests(sequence: list[Op], prefix: str, ids: list[int]) -> list[TransferRequest]:
    out: list[TransferRequest] = []
    pendings: list[str] = []
    for n, (kind, debit, credit, amount) in enumerate(sequence):
        tid = f"{prefix}-{n}"
        if kind in ("post", "void"):
            target = pendings[amount % len(pendings)] if pendings else "missing"
            out.append(TransferRequest(id=tid, kind=TransferKind(kind), pending_id=target,
                                       amount=None if kind == "void" or amount % 3 else amount % 100 + 1))
            continue
        if kind == "pending":
            pendings.append(tid)
        out.append(TransferRequest(id=tid, kind=TransferKind(kind), debit_account=ids[debit],
                                   credit_account=ids[credit], amount=amount))
    return out


def _snapshot(accounts: dict[int, AccountState]) -> list[tuple[int, ...]]:
    return [(a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in accounts.values()]


def _constraints_hold(account: AccountState) -> bool:
    if account.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
        return account.debits_pending + account.debits_posted <= account.credits_posted
    if account.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
        return account.credits_pending + account.credits_posted <= account.debits_posted
    return True


@settings(max_examples=300, deadline=None)
@given(ops, st.lists(st.sampled_from([0, 1, 2]), min_size=ACCOUNTS, max_size=ACCOUNTS))
def test_core_balances_sum_to_zero_and_constraints_hold_for_any_sequence(
    sequence: list[Op], flags: list[int]
) -> None:
    accounts = {i: AccountState(id=i, asset="BTC", flags=f) for i, f in enumerate(flags)}
    accounts[0].flags = 0  # an unconstrained source so that money can enter
    pendings: dict[str, PendingState] = {}
    seq = 0
    for req in _requests(sequence, "p", list(range(ACCOUNTS))):
        before = _snapshot(accounts)
        try:
            validate_request_shape(req)
            entry = apply_transfer(req, accounts, pendings, seq=seq + 1, now_ms=0,
                                       actor="service:test")
        except LedgerError:
            assert _snapshot(accounts) == before, "a refused transfer changed state"
            continue
        seq += 1
        if entry.kind is TransferKind.PENDING:
            pendings[entry.id] = PendingState(entry)
        assert sum(a.credits_posted - a.debits_posted for a in accounts.values()) == 0
        assert sum(a.credits_pending - a.debits_pending for a in accounts.values()) == 0
        assert all(_constraints_hold(a) for a in accounts.values())


_run = itertools.count()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops, st.booleans())
def test_database_ledger_sums_to_zero_and_refusals_change_nothing(
    ledger: Ledger, sequence: list[Op], linked: bool
) -> None:
    run = next(_run)
    kinds = [AccountKind.EXTERNAL, AccountKind.USER_AVAILABLE, AccountKind.USER_AVAILABLE,
             AccountKind.HOT_WALLET, AccountKind.FEES]
    ids = [ledger.create_account(f"r{run}-{i}", "USDC", kind).id for i, kind in enumerate(kinds)]
    requests = _requests(sequence, f"r{run}", ids)
    head_before = ledger.head()
    results = ledger.submit(requests, linked=linked)
    created = sum(1 for r in results if r.ok)
    if linked and not all(r.ok for r in results):
        assert ledger.head() == head_before
    else:
        assert ledger.head()[0] == head_before[0] + created
    assert sums_by_asset(ledger)["USDC"] == (0, 0)
    for account_id in ids[1:]:
        account = ledger.get_account(account_id)
        b = account.balance
        state = AccountState(account.id, account.asset, int(account.flags), b.debits_pending,
                             b.debits_posted, b.credits_pending, b.credits_posted)
        assert _constraints_hold(state)


entries = st.builds(
    Entry, seq=st.integers(1, 2**63 - 1),
    id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,20}", fullmatch=True),
    kind=st.sampled_from([k for k in TransferKind if k is not TransferKind.OPEN]),
    debit_account=st.integers(1, 2**31),
    credit_account=st.integers(1, 2**31), asset=st.sampled_from(["BTC", "ETH", "USDC"]),
    amount=st.integers(1, 2**256 - 1), pending_id=st.none() | st.text(max_size=10),
    timeout_s=st.integers(0, 10**6), expires_ms=st.none() | st.integers(0, 2**62),
    code=st.integers(0, 2**31 - 1), reference=st.text(max_size=40),
    timestamp_ms=st.integers(0, 2**62),
    actor=st.from_regex(r"(user|service):[A-Za-z0-9][A-Za-z0-9._:@\-]{0,30}", fullmatch=True),
)
entries = entries | entries.flatmap(lambda e: st.builds(
    replace, st.just(e), kind=st.just(TransferKind.OPEN), account_owner=st.text(max_size=20),
    account_kind=st.sampled_from(list(AccountKind)), account_flags=st.integers(0, 2)))


@settings(max_examples=300, deadline=None)
@given(entries)
def test_entry_bytes_are_the_documented_canonical_json(entry: Entry) -> None:
    assert entry.to_bytes() == canonical_json(entry.to_dict())
    assert Entry.from_bytes(entry.to_bytes()) == entry
