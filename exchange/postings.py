"""Clearing postings into the ledger: one mapping of clearing keys to ledger accounts, one writer.

The clearing house speaks in keys (``m:<account>`` collateral, ``h:<account>``
margin hold, ``a:<user>`` spot balance, and the platform keys ``clearing``,
``fees``, ``insurance``, ``bad_debt``, ``wallet``) and hands out postings
``(id, kind, debit key, credit key, amount, pending_id)`` with kind
``single``, ``pending``, ``void`` or ``post``. :class:`PostingWriter` turns
them into ledger transfers and writes them in linked batches; the embedded
:class:`~exchange.service.ExchangeService` and the clearing-shard settlement
(exchange/stream/shard/settle.py) share it, so both map keys the same way.

Per clearing shard (docs/scale-out.md, "Shard settlement and collateral"):
shard ``MAIN`` (or no shard: the embedded mode) maps exactly like the embedded
mode; any other shard is its own collateral pool, so the owner of every
``m:``/``h:`` key and of the platform keys clearing, fees, insurance and
bad_debt gets the suffix ``@<NAME>``. The spot balance ``a:<user>`` (custody's
user_available account) and the hot wallet are never suffixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import SERVICE_ACTOR, AccountFlags, AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger, ResultStatus, TransferResult
from exchange.risk.clearing import BAD_DEBT, CLEARING, FEES, INSURANCE, WALLET, Posting

PLATFORM_OWNER: Final = "exchange"
CLEARING_OWNER: Final = "exchange.clearing"
BAD_DEBT_OWNER: Final = "exchange.bad_debt"
WALLET_OWNER: Final = "platform"
POSTING_CODE: Final = 7000  # ledger ``code`` of every exchange transfer
MAIN_SHARD: Final = "MAIN"
SHARD_SEPARATOR: Final = "@"

_KINDS: Final = {
    "pending": TransferKind.PENDING,
    "single": TransferKind.SINGLE,
    "void": TransferKind.VOID,
    "post": TransferKind.POST,
}


class LedgerOutOfSync(RuntimeError):
    """The ledger refused postings the clearing house had validated: corrupt state."""

    def __init__(self, message: str, result: TransferResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def account_of(key: str, shard: str | None = None) -> tuple[str, AccountKind, int | None]:
    """Map a clearing key to (owner, kind, flags) in ``shard``; None flags: the kind's default.

    ``shard`` None or ``MAIN``: the embedded mapping. Another shard suffixes the
    owner of ``m:``/``h:`` keys and of the clearing, fees, insurance and bad_debt
    accounts with ``@<shard>``; ``a:`` and the wallet stay shared.
    """
    owner, kind, flags = _embedded_account_of(key)
    if shard is None or key == WALLET:
        return owner, kind, flags
    if SHARD_SEPARATOR in owner:
        # "alice@EU" on shard MAIN would be shard EU's alice: no account of a shard may
        # spell another shard's owner.
        raise ValueError(f"clearing key was {key!r}: a shard account may not contain "
                         f"{SHARD_SEPARATOR!r}")
    if shard == MAIN_SHARD or key.startswith("a:"):
        return owner, kind, flags
    return f"{owner}{SHARD_SEPARATOR}{shard}", kind, flags


def _embedded_account_of(key: str) -> tuple[str, AccountKind, int | None]:
    if key == CLEARING:
        # The clearing account's balance is minus the open positions' cost basis: it goes
        # negative while losers have not realised yet, so it carries no balance constraint.
        return CLEARING_OWNER, AccountKind.USER_MARGIN, int(AccountFlags.NONE)
    if key == BAD_DEBT:
        # Losses nobody could absorb (insurance fund and ADL exhausted): a platform receivable
        # kept visible here rather than as a negative user balance, so it is unconstrained.
        return BAD_DEBT_OWNER, AccountKind.USER_MARGIN, int(AccountFlags.NONE)
    if key == FEES:
        return PLATFORM_OWNER, AccountKind.FEES, None
    if key == INSURANCE:
        return PLATFORM_OWNER, AccountKind.INSURANCE_FUND, None
    if key == WALLET:
        return WALLET_OWNER, AccountKind.HOT_WALLET, None
    prefix, sep, owner = key.partition(":")
    if sep and owner:
        if prefix == "m":
            # Cross margin: the wallet balance may dip below zero while unrealised gains keep
            # equity positive; the clearing house (not a ledger flag) enforces margin.
            return owner, AccountKind.USER_MARGIN, int(AccountFlags.NONE)
        if prefix == "h":
            return owner, AccountKind.USER_HELD, None
        if prefix == "a":
            return owner, AccountKind.USER_AVAILABLE, None
    raise ValueError(f"clearing key was {key!r}, not a known account key")


@dataclass
class WriteStats:
    """What the ledger made of the postings written so far."""

    submissions: int = 0
    created: int = 0
    existing: int = 0


class PostingWriter:
    """Map clearing keys to ledger accounts (created on first use) and write postings."""

    def __init__(self, ledger: Ledger, asset: str = "USDC", shard: str | None = None, *,
                 actor: str = SERVICE_ACTOR, reference: str = "") -> None:
        self.ledger = ledger
        self.asset = asset
        self.shard = shard
        self.actor = actor
        self.reference = reference
        self.stats = WriteStats()
        self._ids: dict[str, int] = {}

    def owner(self, key: str) -> tuple[str, AccountKind, int | None]:
        """Return the (owner, kind, flags) a key maps to in this writer's shard."""
        return account_of(key, self.shard)

    def account(self, key: str) -> int:
        """Return the ledger account id behind a clearing key, creating it on first use."""
        found = self._ids.get(key)
        if found is not None:
            return found
        owner, kind, flags = account_of(key, self.shard)
        view = self.ledger.find_account(owner, self.asset, kind)
        if view is None:
            try:
                view = self.ledger.create_account(owner, self.asset, kind, flags, actor=self.actor)
            except LedgerError as exc:
                # Another writer (a gateway process, a concurrent deposit) opened it first.
                view = self.ledger.find_account(owner, self.asset, kind)
                if exc.code is not LedgerCode.ACCOUNT_EXISTS or view is None:
                    raise
        self._ids[key] = view.id
        return view.id

    def find(self, key: str) -> int | None:
        """Return the ledger account id behind a key if the account exists (never creates it)."""
        found = self._ids.get(key)
        if found is not None:
            return found
        owner, kind, _ = account_of(key, self.shard)
        view = self.ledger.find_account(owner, self.asset, kind)
        if view is None:
            return None
        self._ids[key] = view.id
        return view.id

    def request(self, p: Posting) -> TransferRequest:
        """Return the ledger transfer request of one posting."""
        tid, kind, debit, credit, amount, pending_id = p
        if kind == "void":
            return TransferRequest(id=tid, kind=TransferKind.VOID, pending_id=pending_id,
                                   code=POSTING_CODE, reference=self.reference)
        if kind == "post":
            # The keys are checked against the pending transfer's accounts by the ledger.
            return TransferRequest(id=tid, kind=TransferKind.POST, pending_id=pending_id,
                                   debit_account=self.account(debit),
                                   credit_account=self.account(credit), amount=amount,
                                   asset=self.asset, code=POSTING_CODE, reference=self.reference)
        return TransferRequest(id=tid, kind=_KINDS[kind], debit_account=self.account(debit),
                               credit_account=self.account(credit), amount=amount,
                               asset=self.asset, code=POSTING_CODE, reference=self.reference)

    def submit(self, postings: Sequence[Posting]) -> list[TransferResult]:
        """Write at most MAX_BATCH postings in one linked submission; raise if any is refused.

        All or none: a refusal (including an id already used with a different
        body) raises :class:`LedgerOutOfSync` naming the posting that failed and
        leaves the ledger unchanged. A posting already written with the same body
        is reported ``exists`` and changes nothing (a retry).
        """
        if len(postings) > MAX_BATCH:
            raise ValueError(f"{len(postings)} postings in one submission, at most {MAX_BATCH}")
        results = self.ledger.submit([self.request(p) for p in postings], linked=True,
                                     actor=self.actor)
        failed = [r for r in results if not r.ok]
        if failed:
            # Name the transfer that failed, not one that only failed with it.
            cause = next((r for r in failed if r.code != LedgerCode.LINKED_TRANSFER_FAILED),
                         failed[0])
            raise LedgerOutOfSync(f"ledger refused {cause.id}: {cause.code} {cause.message}", cause)
        self.stats.submissions += 1
        for r in results:
            if r.status is ResultStatus.CREATED:
                self.stats.created += 1
            else:
                self.stats.existing += 1
        return results

    def write(self, postings: Sequence[Posting]) -> int:
        """Write postings in linked chunks of MAX_BATCH, in order; return how many."""
        for start in range(0, len(postings), MAX_BATCH):
            self.submit(postings[start:start + MAX_BATCH])
        return len(postings)

    def balance(self, key: str) -> int:
        """Return the posted credit balance of a key's ledger account."""
        return self.ledger.balance(self.account(key)).credit_balance_posted

    def hold(self, account: str) -> int:
        """Return the pending (held) amount of an account's margin hold."""
        return self.ledger.balance(self.account(f"h:{account}")).credits_pending
