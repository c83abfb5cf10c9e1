"""Builders shared by the ledger tests."""

from __future__ import annotations

from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import AccountView, Ledger


def funded_user(ledger: Ledger, owner: str, asset: str, amount: int) -> tuple[AccountView, AccountView]:
    """Create a hot wallet and a user account holding ``amount``; return (user, wallet)."""
    wallet = ledger.ensure_account("platform", asset, AccountKind.HOT_WALLET)
    user = ledger.create_account(owner, asset, AccountKind.USER_AVAILABLE)
    if amount:
        ledger.transfer(TransferRequest(id=f"fund-{owner}-{asset}", debit_account=wallet.id,
                                        credit_account=user.id, amount=amount))
    return ledger.get_account(user.id), wallet


def single(tid: str, debit: int, credit: int, amount: int, **kw: object) -> TransferRequest:
    """A single-phase transfer request."""
    return TransferRequest(id=tid, debit_account=debit, credit_account=credit, amount=amount, **kw)  # type: ignore[arg-type]


def pending(tid: str, debit: int, credit: int, amount: int, timeout_s: int = 0) -> TransferRequest:
    """A pending (two-phase) transfer request."""
    return TransferRequest(id=tid, kind=TransferKind.PENDING, debit_account=debit,
                           credit_account=credit, amount=amount, timeout_s=timeout_s)


def sums_by_asset(ledger: Ledger) -> dict[str, tuple[int, int]]:
    """Return per asset (sum of posted credits - debits, sum of pending credits - debits)."""
    sums: dict[str, tuple[int, int]] = {}
    for account in ledger.list_accounts():
        b = account.balance
        posted, pend = sums.get(account.asset, (0, 0))
        sums[account.asset] = (posted + b.credits_posted - b.debits_posted,
                               pend + b.credits_pending - b.debits_pending)
    return sums
