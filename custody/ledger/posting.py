"""The pure core of the ledger: validate one transfer against working balances, then apply it.

Nothing here does I/O. The service loads the accounts and pending transfers a
batch touches, runs every request through :func:`apply_transfer`, and writes
the resulting entries and balances in one database transaction. A request
that fails validation leaves the working state exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import OPEN_ID_PREFIX, AccountFlags, Entry, TransferKind, open_entry_id
from custody.money import U256_MAX

TRANSFER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,119}$")
REFERENCE_MAX_LEN = 256
# A pending transfer may hold funds for at most 30 days before it expires.
TIMEOUT_MAX_S = 30 * 24 * 3600
CODE_MAX = 2**31 - 1
# Plain ints: IntFlag arithmetic costs a Python-level call on the hot path.
DEBITS_LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CREDITS_LIMITED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
REQUEST_KINDS = frozenset(
    {TransferKind.SINGLE, TransferKind.PENDING, TransferKind.POST, TransferKind.VOID}
)


@dataclass(slots=True)
class AccountState:
    """Working balances of one account while a batch is applied."""

    id: int
    asset: str
    flags: int
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    last_seq: int = 0


@dataclass(slots=True)
class PendingState:
    """A pending transfer and how (if at all) it has been resolved."""

    entry: Entry
    resolved_by: TransferKind | None = None


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """What a caller asks the ledger to do. ``id`` makes retries safe."""

    id: str
    kind: TransferKind = TransferKind.SINGLE
    debit_account: int | None = None
    credit_account: int | None = None
    amount: int | None = None
    asset: str | None = None
    pending_id: str | None = None
    timeout_s: int = 0
    code: int = 0
    reference: str = ""


def validate_request_shape(req: TransferRequest) -> None:
    """Check the fields that need no state: ids, kinds, amounts, lengths."""
    # fullmatch: with match, "$" also accepts a trailing newline ("t1\n").
    if not TRANSFER_ID_PATTERN.fullmatch(req.id) or req.id.startswith(OPEN_ID_PREFIX):
        raise LedgerError(
            LedgerCode.INVALID_TRANSFER_ID,
            f"transfer id was {req.id[:140]!r}, must be 1-120 characters of [A-Za-z0-9._:-] "
            f"not starting with {OPEN_ID_PREFIX!r} (reserved for account openings)",
        )
    if req.kind not in REQUEST_KINDS:
        raise LedgerError(LedgerCode.INVALID_FIELD, f"kind was {req.kind!r}, must be one of "
                          "single, pending, post, void")
    if not 0 <= req.code <= CODE_MAX:
        raise LedgerError(LedgerCode.INVALID_FIELD, f"code was {req.code}, must be 0..{CODE_MAX}")
    if len(req.reference) > REFERENCE_MAX_LEN:
        raise LedgerError(LedgerCode.INVALID_FIELD,
                          f"reference was {len(req.reference)} characters, must be at most "
                          f"{REFERENCE_MAX_LEN}")
    if req.kind in (TransferKind.SINGLE, TransferKind.PENDING):
        _validate_new_funds_shape(req)
    else:
        _validate_resolution_shape(req)


def _validate_new_funds_shape(req: TransferRequest) -> None:
    if req.debit_account is None or req.credit_account is None:
        raise LedgerError(LedgerCode.INVALID_FIELD,
                          "debit_account and credit_account are required")
    if req.debit_account == req.credit_account:
        raise LedgerError(LedgerCode.SAME_ACCOUNT,
                          f"debit and credit account were both {req.debit_account}, must differ")
    if req.amount is None or not 0 < req.amount <= U256_MAX:
        raise LedgerError(LedgerCode.INVALID_AMOUNT,
                          f"amount was {req.amount}, must be a positive integer below 2**256")
    if req.pending_id is not None:
        raise LedgerError(LedgerCode.INVALID_FIELD,
                          f"pending_id is only for post and void, kind was {req.kind.value}")
    if req.kind is TransferKind.SINGLE and req.timeout_s != 0:
        raise LedgerError(LedgerCode.INVALID_TIMEOUT, "timeout_s is only for pending transfers")
    if not 0 <= req.timeout_s <= TIMEOUT_MAX_S:
        raise LedgerError(LedgerCode.INVALID_TIMEOUT,
                          f"timeout_s was {req.timeout_s}, must be 0..{TIMEOUT_MAX_S}")


def _validate_resolution_shape(req: TransferRequest) -> None:
    if req.pending_id is None:
        raise LedgerError(LedgerCode.INVALID_FIELD, f"pending_id is required for {req.kind.value}")
    if not TRANSFER_ID_PATTERN.fullmatch(req.pending_id):
        # Not a transfer id, so it can name no pending transfer: refused now, not at approval.
        raise LedgerError(LedgerCode.INVALID_TRANSFER_ID,
                          f"pending_id was {req.pending_id[:140]!r}, must be a transfer id "
                          "(1-120 characters of [A-Za-z0-9._:-])")
    if req.timeout_s != 0:
        raise LedgerError(LedgerCode.INVALID_TIMEOUT, "timeout_s is only for pending transfers")
    if req.kind is TransferKind.VOID and req.amount not in (None, 0):
        raise LedgerError(LedgerCode.INVALID_AMOUNT,
                          f"amount was {req.amount}, a void releases the whole pending amount")
    if req.kind is TransferKind.POST and req.amount is not None and req.amount <= 0:
        raise LedgerError(LedgerCode.INVALID_AMOUNT, f"amount was {req.amount}, must be positive")


def apply_transfer(
    req: TransferRequest,
    accounts: dict[int, AccountState],
    pendings: dict[str, PendingState],
    *,
    seq: int,
    now_ms: int,
    actor: str,
) -> Entry:
    """Validate ``req`` against the working state and, only if valid, apply it.

    Return the journal entry, which records ``actor`` as its cause. Raise
    :class:`LedgerError` (state untouched) on refusal.
    """
    if req.kind in (TransferKind.SINGLE, TransferKind.PENDING):
        return _apply_new_funds(req, accounts, seq=seq, now_ms=now_ms, actor=actor)
    return _apply_resolution(req, accounts, pendings, seq=seq, now_ms=now_ms, actor=actor)


def _account(accounts: dict[int, AccountState], account_id: int, role: str) -> AccountState:
    account = accounts.get(account_id)
    if account is None:
        raise LedgerError(LedgerCode.UNKNOWN_ACCOUNT, f"{role} account {account_id} does not exist")
    return account


def _apply_new_funds(
    req: TransferRequest, accounts: dict[int, AccountState], *, seq: int, now_ms: int, actor: str
) -> Entry:
    assert req.debit_account is not None and req.credit_account is not None
    assert req.amount is not None
    debit = _account(accounts, req.debit_account, "debit")
    credit = _account(accounts, req.credit_account, "credit")
    _check_assets(req, debit, credit)
    amount = req.amount
    if debit.flags & DEBITS_LIMITED and (
        debit.debits_pending + debit.debits_posted + amount > debit.credits_posted
    ):
        available = debit.credits_posted - debit.debits_posted - debit.debits_pending
        raise LedgerError(LedgerCode.INSUFFICIENT_FUNDS,
                          f"account {debit.id} has {available} available, transfer needs {amount}")
    if credit.flags & CREDITS_LIMITED and (
        credit.credits_pending + credit.credits_posted + amount > credit.debits_posted
    ):
        available = credit.debits_posted - credit.credits_posted - credit.credits_pending
        raise LedgerError(LedgerCode.CREDITS_EXCEED_DEBITS,
                          f"account {credit.id} has {available} available, transfer needs {amount}")
    pending = req.kind is TransferKind.PENDING
    if pending:
        debit.debits_pending += amount
        credit.credits_pending += amount
    else:
        debit.debits_posted += amount
        credit.credits_posted += amount
    debit.last_seq = credit.last_seq = seq
    return Entry(
        seq=seq, id=req.id, kind=req.kind, debit_account=debit.id, credit_account=credit.id,
        asset=debit.asset, amount=amount, pending_id=None, timeout_s=req.timeout_s,
        expires_ms=now_ms + req.timeout_s * 1000 if pending and req.timeout_s else None,
        code=req.code, reference=req.reference, timestamp_ms=now_ms, actor=actor,
    )


def _check_assets(req: TransferRequest, debit: AccountState, credit: AccountState) -> None:
    if debit.asset != credit.asset:
        raise LedgerError(LedgerCode.ASSET_MISMATCH,
                          f"debit account {debit.id} holds {debit.asset}, credit account "
                          f"{credit.id} holds {credit.asset}")
    if req.asset is not None and req.asset != debit.asset:
        raise LedgerError(LedgerCode.ASSET_MISMATCH,
                          f"asset was {req.asset}, accounts hold {debit.asset}")


def _apply_resolution(
    req: TransferRequest,
    accounts: dict[int, AccountState],
    pendings: dict[str, PendingState],
    *,
    seq: int,
    now_ms: int,
    actor: str,
) -> Entry:
    assert req.pending_id is not None
    state = _pending_for(req, pendings, now_ms)
    held = state.entry
    if req.debit_account not in (None, held.debit_account) or req.credit_account not in (
        None, held.credit_account,
    ):
        raise LedgerError(LedgerCode.INVALID_FIELD,
                          f"accounts must match pending transfer {held.id} "
                          f"({held.debit_account} -> {held.credit_account})")
    if req.asset is not None and req.asset != held.asset:
        raise LedgerError(LedgerCode.ASSET_MISMATCH,
                          f"asset was {req.asset}, pending transfer {held.id} is {held.asset}")
    amount = held.amount
    if req.kind is TransferKind.POST:
        amount = held.amount if req.amount is None else req.amount
        if amount > held.amount:
            raise LedgerError(LedgerCode.POST_AMOUNT_EXCEEDS_PENDING,
                              f"post amount was {amount}, pending transfer {held.id} holds "
                              f"{held.amount}")
    _release(held, amount if req.kind is TransferKind.POST else 0, accounts, seq)
    state.resolved_by = req.kind
    return Entry(
        seq=seq, id=req.id, kind=req.kind, debit_account=held.debit_account,
        credit_account=held.credit_account, asset=held.asset, amount=amount,
        pending_id=held.id, timeout_s=0, expires_ms=None, code=req.code or held.code,
        reference=req.reference, timestamp_ms=now_ms, actor=actor,
    )


def _pending_for(req: TransferRequest, pendings: dict[str, PendingState], now_ms: int) -> PendingState:
    assert req.pending_id is not None
    state = pendings.get(req.pending_id)
    if state is None:
        raise LedgerError(LedgerCode.PENDING_TRANSFER_NOT_FOUND,
                          f"pending transfer {req.pending_id!r} does not exist")
    if state.entry.kind is not TransferKind.PENDING:
        raise LedgerError(LedgerCode.NOT_A_PENDING_TRANSFER,
                          f"transfer {req.pending_id!r} is {state.entry.kind.value}, not pending")
    resolved = state.resolved_by
    if resolved is TransferKind.POST:
        raise LedgerError(LedgerCode.PENDING_TRANSFER_ALREADY_POSTED,
                          f"pending transfer {req.pending_id!r} was already posted")
    if resolved is TransferKind.VOID:
        raise LedgerError(LedgerCode.PENDING_TRANSFER_ALREADY_VOIDED,
                          f"pending transfer {req.pending_id!r} was already voided")
    expires_ms = state.entry.expires_ms
    if resolved is TransferKind.EXPIRE or (expires_ms is not None and now_ms >= expires_ms):
        raise LedgerError(LedgerCode.PENDING_TRANSFER_EXPIRED,
                          f"pending transfer {req.pending_id!r} expired at {expires_ms} ms")
    return state


def _release(held: Entry, posted: int, accounts: dict[int, AccountState], seq: int) -> None:
    """Move a pending amount out of pending, posting ``posted`` of it."""
    debit = accounts[held.debit_account]
    credit = accounts[held.credit_account]
    assert debit.debits_pending >= held.amount and credit.credits_pending >= held.amount
    debit.debits_pending -= held.amount
    credit.credits_pending -= held.amount
    debit.debits_posted += posted
    credit.credits_posted += posted
    debit.last_seq = credit.last_seq = seq


def expire(
    pending: PendingState, accounts: dict[int, AccountState], *, seq: int, now_ms: int, actor: str
) -> Entry:
    """Release a pending transfer whose timeout has passed; return the expiry entry."""
    held = pending.entry
    assert pending.resolved_by is None and held.expires_ms is not None
    assert now_ms >= held.expires_ms
    _release(held, 0, accounts, seq)
    pending.resolved_by = TransferKind.EXPIRE
    return Entry(
        seq=seq, id=f"expire:{held.id}", kind=TransferKind.EXPIRE,
        debit_account=held.debit_account, credit_account=held.credit_account, asset=held.asset,
        amount=held.amount, pending_id=held.id, timeout_s=0, expires_ms=None, code=held.code,
        reference="timeout", timestamp_ms=now_ms, actor=actor,
    )


def open_account(
    account_id: int, owner: str, asset: str, kind: str, flags: int, *, seq: int, now_ms: int,
    actor: str,
) -> Entry:
    """Return the journal entry that opens an account with its terms (amount 0)."""
    return Entry(
        seq=seq, id=open_entry_id(account_id), kind=TransferKind.OPEN, debit_account=account_id,
        credit_account=account_id, asset=asset, amount=0, pending_id=None, timeout_s=0,
        expires_ms=None, code=0, reference="", timestamp_ms=now_ms, actor=actor,
        account_owner=owner, account_kind=kind, account_flags=flags,
    )


def request_matches_entry(req: TransferRequest, entry: Entry) -> bool:
    """Tell whether a retried request asks for exactly what ``entry`` already did."""
    if req.kind is not entry.kind or req.pending_id != entry.pending_id:
        return False
    if req.reference != entry.reference or req.timeout_s != entry.timeout_s:
        return False
    if req.asset not in (None, entry.asset):
        return False
    if req.debit_account not in (None, entry.debit_account):
        return False
    if req.credit_account not in (None, entry.credit_account):
        return False
    if req.kind in (TransferKind.SINGLE, TransferKind.PENDING):
        return req.amount == entry.amount and req.code == entry.code
    if req.kind is TransferKind.POST and req.amount is not None and req.amount != entry.amount:
        return False
    return req.code in (0, entry.code)
