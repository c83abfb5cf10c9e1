"""Behaviour of the ledger service on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import GENESIS_HASH, AccountKind, TransferKind, chain_hash
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger, ResultStatus

from .helpers import funded_user, pending, single, sums_by_asset


def test_transfer_moves_amount_and_balances_derive_from_entries(ledger: Ledger) -> None:
    alice, wallet = funded_user(ledger, "alice", "BTC", 1_000)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    result = ledger.transfer(single("t1", alice.id, bob.id, 300))
    assert result.status is ResultStatus.CREATED
    assert ledger.balance(alice.id).credit_balance_posted == 700
    assert ledger.balance(bob.id).credit_balance_posted == 300
    assert ledger.balance(wallet.id).debit_balance_posted == 1_000


def test_amount_of_ten_to_the_thirty_wei_is_stored_exactly(ledger: Ledger) -> None:
    big = 10**30 + 7
    user, wallet = funded_user(ledger, "whale", "ETH", big)
    assert ledger.balance(user.id).credits_posted == big
    assert ledger.get_transfer("fund-whale-ETH").amount == big
    assert ledger.balance(wallet.id).debits_posted == big


def test_transfer_exceeding_balance_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    before = ledger.head()
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("t1", alice.id, bob.id, 101))
    assert err.value.code is LedgerCode.INSUFFICIENT_FUNDS
    assert "100 available" in err.value.message
    assert ledger.head() == before
    assert ledger.balance(alice.id).credit_balance_posted == 100


def test_wallet_cannot_send_more_than_it_holds(ledger: Ledger) -> None:
    wallet = ledger.create_account("platform", "BTC", AccountKind.HOT_WALLET)
    external = ledger.create_account("platform", "BTC", AccountKind.EXTERNAL)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("t1", external.id, wallet.id, 5))
    assert err.value.code is LedgerCode.CREDITS_EXCEED_DEBITS


@pytest.mark.parametrize(
    ("request_kwargs", "code"),
    [
        ({"amount": 0}, LedgerCode.INVALID_AMOUNT),
        ({"amount": -5}, LedgerCode.INVALID_AMOUNT),
        ({"amount": 2**256}, LedgerCode.INVALID_AMOUNT),
        ({"id": "bad id with spaces"}, LedgerCode.INVALID_TRANSFER_ID),
        ({"id": ""}, LedgerCode.INVALID_TRANSFER_ID),
        ({"id": "t1\n"}, LedgerCode.INVALID_TRANSFER_ID),
        ({"kind": TransferKind.POST, "pending_id": "", "debit_account": None, "credit_account": None},
         LedgerCode.INVALID_TRANSFER_ID),
        ({"kind": TransferKind.VOID, "pending_id": "a/b", "amount": None, "debit_account": None,
          "credit_account": None}, LedgerCode.INVALID_TRANSFER_ID),
        ({"credit_account": 999_999}, LedgerCode.UNKNOWN_ACCOUNT),
        ({"asset": "ETH"}, LedgerCode.ASSET_MISMATCH),
        ({"timeout_s": 10}, LedgerCode.INVALID_TIMEOUT),
        ({"pending_id": "x"}, LedgerCode.INVALID_FIELD),
        ({"reference": "r" * 257}, LedgerCode.INVALID_FIELD),
    ],
)
def test_invalid_transfer_is_refused_with_its_code(
    ledger: Ledger, request_kwargs: dict[str, object], code: LedgerCode
) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    fields: dict[str, object] = {"id": "t1", "debit_account": alice.id,
                                 "credit_account": bob.id, "amount": 10}
    fields.update(request_kwargs)
    before = ledger.head()
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(**fields))  # type: ignore[arg-type]
    assert err.value.code is code
    assert ledger.head() == before


def test_transfer_between_accounts_of_different_assets_is_refused(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob_eth, _ = funded_user(ledger, "bob", "ETH", 0)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("t1", alice.id, bob_eth.id, 10))
    assert err.value.code is LedgerCode.ASSET_MISMATCH


def test_transfer_to_same_account_is_refused(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("t1", alice.id, alice.id, 10))
    assert err.value.code is LedgerCode.SAME_ACCOUNT


def test_retry_with_same_id_and_body_is_a_no_op_returning_original(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    first = ledger.transfer(single("t1", alice.id, bob.id, 10))
    again = ledger.transfer(single("t1", alice.id, bob.id, 10))
    assert again.status is ResultStatus.EXISTS
    assert again.entry == first.entry
    assert ledger.balance(bob.id).credit_balance_posted == 10


def test_retry_with_same_id_and_different_body_is_an_error(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    ledger.transfer(single("t1", alice.id, bob.id, 10))
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("t1", alice.id, bob.id, 11))
    assert err.value.code is LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS
    assert ledger.balance(bob.id).credit_balance_posted == 10


def test_linked_batch_applies_all_or_nothing(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    before = ledger.head()
    results = ledger.submit([single("a", alice.id, bob.id, 60), single("b", alice.id, bob.id, 60)],
                            linked=True)
    assert [r.code for r in results] == [LedgerCode.LINKED_TRANSFER_FAILED,
                                         LedgerCode.INSUFFICIENT_FUNDS]
    assert ledger.head() == before
    assert ledger.balance(bob.id).credit_balance_posted == 0
    ok = ledger.submit([single("a", alice.id, bob.id, 60), single("b", bob.id, alice.id, 20)],
                       linked=True)
    assert all(r.status is ResultStatus.CREATED for r in ok)
    assert ledger.balance(bob.id).credit_balance_posted == 40


def test_unlinked_batch_applies_each_transfer_on_its_own(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    results = ledger.submit([single("a", alice.id, bob.id, 60), single("b", alice.id, bob.id, 60),
                             single("c", alice.id, bob.id, 40)])
    assert [r.status for r in results] == [ResultStatus.CREATED, ResultStatus.FAILED,
                                           ResultStatus.CREATED]
    assert results[1].code is LedgerCode.INSUFFICIENT_FUNDS
    assert ledger.balance(alice.id).credit_balance_posted == 0


def test_batch_with_duplicate_id_refuses_the_duplicate(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    results = ledger.submit([single("a", alice.id, bob.id, 1), single("a", alice.id, bob.id, 1)])
    assert results[1].code is LedgerCode.DUPLICATE_ID_IN_BATCH
    assert ledger.balance(bob.id).credit_balance_posted == 1


def test_batch_over_the_limit_or_empty_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError) as err:
        ledger.submit([single(f"t{i}", 1, 2, 1) for i in range(MAX_BATCH + 1)])
    assert err.value.code is LedgerCode.BATCH_TOO_LARGE
    with pytest.raises(LedgerError) as err:
        ledger.submit([])
    assert err.value.code is LedgerCode.BATCH_EMPTY


def test_pending_transfer_reserves_funds_until_posted(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70))
    assert ledger.balance(alice.id).credit_balance_available == 30
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("spend", alice.id, held.id, 31))
    assert err.value.code is LedgerCode.INSUFFICIENT_FUNDS
    ledger.transfer(TransferRequest(id="post", kind=TransferKind.POST, pending_id="hold"))
    balance = ledger.balance(alice.id)
    assert (balance.debits_pending, balance.credit_balance_posted) == (0, 30)


def test_partial_post_releases_the_remainder(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70))
    ledger.transfer(TransferRequest(id="post", kind=TransferKind.POST, pending_id="hold",
                                    amount=50))
    assert ledger.balance(alice.id).credit_balance_available == 50
    assert ledger.get_transfer("post").amount == 50


def test_post_more_than_pending_is_refused(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70))
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="post", kind=TransferKind.POST, pending_id="hold",
                                        amount=71))
    assert err.value.code is LedgerCode.POST_AMOUNT_EXCEEDS_PENDING


def test_void_releases_the_hold(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70))
    ledger.transfer(TransferRequest(id="void", kind=TransferKind.VOID, pending_id="hold"))
    assert ledger.balance(alice.id).credit_balance_available == 100


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (TransferKind.POST, TransferKind.POST, LedgerCode.PENDING_TRANSFER_ALREADY_POSTED),
        (TransferKind.POST, TransferKind.VOID, LedgerCode.PENDING_TRANSFER_ALREADY_POSTED),
        (TransferKind.VOID, TransferKind.POST, LedgerCode.PENDING_TRANSFER_ALREADY_VOIDED),
        (TransferKind.VOID, TransferKind.VOID, LedgerCode.PENDING_TRANSFER_ALREADY_VOIDED),
    ],
)
def test_resolving_a_pending_transfer_twice_is_a_specific_error(
    ledger: Ledger, first: TransferKind, second: TransferKind, code: LedgerCode
) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70))
    ledger.transfer(TransferRequest(id="r1", kind=first, pending_id="hold"))
    before = ledger.head()
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="r2", kind=second, pending_id="hold"))
    assert err.value.code is code
    assert ledger.head() == before


def test_post_of_unknown_or_non_pending_transfer_is_refused(ledger: Ledger) -> None:
    funded_user(ledger, "alice", "USDC", 100)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="p", kind=TransferKind.POST, pending_id="nope"))
    assert err.value.code is LedgerCode.PENDING_TRANSFER_NOT_FOUND
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="p", kind=TransferKind.POST,
                                        pending_id="fund-alice-USDC"))
    assert err.value.code is LedgerCode.NOT_A_PENDING_TRANSFER


def test_pending_transfer_expires_after_its_timeout(ledger: Ledger, clock) -> None:  # type: ignore[no-untyped-def]
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70, timeout_s=60))
    clock.advance(59_999)
    assert ledger.expire_pending() == []
    clock.advance(1)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="late", kind=TransferKind.POST, pending_id="hold"))
    assert err.value.code is LedgerCode.PENDING_TRANSFER_EXPIRED
    expired = ledger.expire_pending()
    assert [e.kind for e in expired] == [TransferKind.EXPIRE]
    assert ledger.balance(alice.id).credit_balance_available == 100
    assert ledger.expire_pending() == []
    with pytest.raises(LedgerError) as err:
        ledger.transfer(TransferRequest(id="late2", kind=TransferKind.VOID, pending_id="hold"))
    assert err.value.code is LedgerCode.PENDING_TRANSFER_EXPIRED


def test_pending_and_post_in_one_linked_batch(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    results = ledger.submit([pending("hold", alice.id, held.id, 70),
                             TransferRequest(id="post", kind=TransferKind.POST, pending_id="hold")],
                            linked=True)
    assert all(r.ok for r in results)
    assert ledger.balance(held.id).credits_posted == 70


def test_journal_is_hash_chained_from_genesis(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    ledger.submit([single(f"t{i}", alice.id, bob.id, 1) for i in range(5)])
    tip = GENESIS_HASH
    entries = ledger.journal()
    assert [e.seq for e, _ in entries] == list(range(1, len(entries) + 1))
    for entry, entry_hash in entries:
        tip = chain_hash(tip, entry.to_bytes())
        assert entry_hash == tip
    assert ledger.head() == (len(entries), tip)


def test_journal_rows_cannot_be_updated_or_deleted(ledger: Ledger) -> None:
    funded_user(ledger, "alice", "BTC", 100)
    engine = ledger._sessions.kw["bind"]
    for statement in ("UPDATE ledger_transfers SET amount = '1'", "DELETE FROM ledger_transfers"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert ledger.get_transfer("fund-alice-BTC").amount == 100


def test_history_pages_with_a_cursor(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    ledger.submit([single(f"t{i}", alice.id, bob.id, 1) for i in range(7)])
    page = ledger.history(bob.id, limit=3)
    seen = [e.id for e in page.entries]
    while page.next_cursor is not None:
        page = ledger.history(bob.id, after_seq=page.next_cursor, limit=3)
        seen += [e.id for e in page.entries]
    assert seen == [f"t{i}" for i in range(7)]


def test_account_creation_validates_and_refuses_duplicates(ledger: Ledger) -> None:
    ledger.create_account("alice", "BTC", "user_available")
    cases = [(("alice", "BTC", "user_available"), LedgerCode.ACCOUNT_EXISTS),
             (("alice", "DOGE", "user_available"), LedgerCode.UNKNOWN_ASSET),
             (("alice", "BTC", "savings"), LedgerCode.INVALID_ACCOUNT_KIND),
             (("", "BTC", "user_available"), LedgerCode.INVALID_OWNER),
             (("carol\n", "BTC", "user_available"), LedgerCode.INVALID_OWNER)]
    for args, code in cases:
        with pytest.raises(LedgerError) as err:
            ledger.create_account(*args)
        assert err.value.code is code
    with pytest.raises(LedgerError) as err:
        ledger.create_account("bob", "BTC", "user_available", flags=7)
    assert err.value.code is LedgerCode.INVALID_FLAGS


def test_sums_per_asset_are_zero_after_mixed_operations(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 50)
    funded_user(ledger, "carol", "ETH", 10**30)
    ledger.transfer(pending("h", alice.id, bob.id, 30))
    ledger.transfer(single("s", bob.id, alice.id, 5))
    assert sums_by_asset(ledger) == {"BTC": (0, 0), "ETH": (0, 0)}


def test_submit_records_the_callers_actor_in_the_hash_chained_entry(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    ledger.submit([single("t1", alice.id, bob.id, 5)], actor="user:42")
    ledger.transfer(single("t2", alice.id, bob.id, 5), actor="service:exchange")
    entries = {entry.id: (entry, entry_hash) for entry, entry_hash in ledger.journal()}
    assert entries["t1"][0].actor == "user:42"
    assert entries["t2"][0].actor == "service:exchange"
    assert b'"actor":"user:42"' in entries["t1"][0].to_bytes()
    assert ledger.get_transfer("t1").actor == "user:42"


def test_submit_without_actor_records_the_ledger_service(ledger: Ledger) -> None:
    funded_user(ledger, "alice", "BTC", 100)
    assert ledger.get_transfer("fund-alice-BTC").actor == "service:ledger"


def test_retry_by_another_actor_keeps_the_original_actor(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    ledger.transfer(single("t1", alice.id, bob.id, 5), actor="user:alice")
    again = ledger.transfer(single("t1", alice.id, bob.id, 5), actor="user:mallory")
    assert again.status is ResultStatus.EXISTS
    assert ledger.get_transfer("t1").actor == "user:alice"


@pytest.mark.parametrize("actor", ["", "alice", "admin:1", "user:", "user: x", "user:\x1b[2J",
                                   "service:" + "x" * 129, "user:a/b", "user:alice\n"])
def test_submit_with_malformed_actor_is_refused_and_writes_nothing(ledger: Ledger, actor: str) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    before = ledger.head()
    with pytest.raises(LedgerError) as err:
        ledger.submit([single("t1", alice.id, bob.id, 5)], actor=actor)
    assert err.value.code is LedgerCode.INVALID_ACTOR
    assert ledger.head() == before


def test_expiry_entries_record_the_expiry_service(ledger: Ledger, clock) -> None:  # type: ignore[no-untyped-def]
    alice, _ = funded_user(ledger, "alice", "USDC", 100)
    held = ledger.create_account("platform", "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)
    ledger.transfer(pending("hold", alice.id, held.id, 70, timeout_s=1), actor="user:alice")
    clock.advance(1_000)
    [expired] = ledger.expire_pending()
    assert expired.actor == "service:ledger-expiry"
    assert ledger.get_transfer(expired.id).actor == "service:ledger-expiry"


def test_opening_an_account_journals_its_terms_and_actor_in_a_chained_entry(ledger: Ledger) -> None:
    account = ledger.create_account("alice", "BTC", AccountKind.USER_AVAILABLE, actor="user:7")
    opening = ledger.get_transfer(f"open:{account.id}")
    assert (opening.kind, opening.debit_account, opening.credit_account, opening.amount) == (
        TransferKind.OPEN, account.id, account.id, 0)
    assert (opening.account_owner, opening.account_kind, opening.account_flags, opening.actor) == (
        "alice", "user_available", 1, "user:7")
    assert ledger.head()[0] == opening.seq
    assert ledger.history(account.id).entries == []  # an opening is not a transfer


def test_transfer_ids_with_the_reserved_open_prefix_are_refused(ledger: Ledger) -> None:
    alice, _ = funded_user(ledger, "alice", "BTC", 100)
    bob, _ = funded_user(ledger, "bob", "BTC", 0)
    with pytest.raises(LedgerError) as err:
        ledger.transfer(single("open:99", alice.id, bob.id, 1))
    assert err.value.code is LedgerCode.INVALID_TRANSFER_ID


@pytest.mark.parametrize(("kind", "flags"), [(AccountKind.USER_AVAILABLE, 0), (AccountKind.HOT_WALLET, 1),
                                             (AccountKind.USER_MARGIN, 1), (AccountKind.EXTERNAL, 2)])
def test_flags_other_than_the_kind_requires_are_refused(
    ledger: Ledger, kind: AccountKind, flags: int
) -> None:
    before = ledger.head()
    with pytest.raises(LedgerError) as err:
        ledger.create_account("alice", "BTC", kind, flags=flags)
    assert err.value.code is LedgerCode.INVALID_FLAGS
    assert ledger.head() == before
