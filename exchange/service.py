"""The imperative shell: the pure venue in memory, the ledger as the durable record of collateral.

Order entry never touches the database: the clearing house reserves margin
in memory and queues postings; ``flush()`` writes them to the ledger in
linked batches (one database transaction each, at most ``MAX_BATCH``
transfers). Guarantees (docs/margin.md, "Consistency"):

* Every posting id is ``{namespace}.{clearing seq}.{n}`` (holds:
  ``{namespace}.h.{account}.{n}``), a pure function of the command stream,
  so re-submitting after a crash is a no-op in the ledger (idempotent ids).
* After ``flush()`` returns, for every account the ledger's user_margin
  balance equals the clearing house's collateral, the clearing, fees and
  insurance accounts equal theirs, and the user_held pending amount equals
  the margin hold; between flushes the ledger lags by the queued postings.
* A refused batch is a corrupt-state error (the core already validated
  every posting), never silently dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from custody.ledger.entry import AccountFlags, AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import MAX_BATCH, Ledger
from exchange.risk.clearing import CLEARING, FEES, INSURANCE, WALLET, Posting
from exchange.risk.events import RiskEvent
from exchange.venue import Venue

PLATFORM_OWNER: Final = "exchange"
CLEARING_OWNER: Final = "exchange.clearing"
WALLET_OWNER: Final = "platform"
POSTING_CODE: Final = 7000  # ledger ``code`` of every exchange transfer
MAX_EVENTS_KEPT: Final = 100_000

_KINDS = {
    "pending": TransferKind.PENDING,
    "single": TransferKind.SINGLE,
    "void": TransferKind.VOID,
}


class LedgerOutOfSync(RuntimeError):
    """The ledger refused postings the clearing house had validated: corrupt state."""


class ExchangeService:
    """The venue plus its ledger accounts; every public method leaves the ledger in sync."""

    def __init__(self, ledger: Ledger, venue: Venue, asset: str = "USDC") -> None:
        self.ledger = ledger
        self.venue = venue
        self.asset = asset
        self.lock = threading.RLock()
        self.events: list[RiskEvent] = []
        self._ids: dict[str, int] = {}

    @contextmanager
    def command(self) -> Iterator[Venue]:
        """Run venue calls under the lock and flush their postings to the ledger afterwards."""
        with self.lock:
            try:
                yield self.venue
            finally:
                self.flush()

    def flush(self) -> int:
        """Write queued postings to the ledger; return how many were submitted."""
        postings, events = self.venue.drain()
        self.events.extend(events)
        if len(self.events) > MAX_EVENTS_KEPT:
            del self.events[: len(self.events) - MAX_EVENTS_KEPT]
        requests = [self._request(p) for p in postings]
        for start in range(0, len(requests), MAX_BATCH):
            chunk = requests[start:start + MAX_BATCH]
            results = self.ledger.submit(chunk, linked=True)
            failed = [r for r in results if not r.ok]
            if failed:
                raise LedgerOutOfSync(f"ledger refused {failed[0].id}: {failed[0].code} "
                                      f"{failed[0].message}")
        return len(requests)

    def _request(self, p: Posting) -> TransferRequest:
        tid, kind, debit, credit, amount, pending_id = p
        if kind == "void":
            return TransferRequest(id=tid, kind=TransferKind.VOID, pending_id=pending_id,
                                   code=POSTING_CODE)
        return TransferRequest(id=tid, kind=_KINDS[kind], debit_account=self.ledger_account(debit),
                               credit_account=self.ledger_account(credit), amount=amount,
                               asset=self.asset, code=POSTING_CODE)

    def ledger_account(self, key: str) -> int:
        """Return the ledger account id behind a clearing-house key, creating it on first use."""
        found = self._ids.get(key)
        if found is not None:
            return found
        owner, kind, flags = _account_of(key)
        view = self.ledger.find_account(owner, self.asset, kind)
        if view is None:
            view = self.ledger.create_account(owner, self.asset, kind, flags)
        self._ids[key] = view.id
        return view.id

    def credit_deposit(self, owner: str, amount: int, transfer_id: str) -> None:
        """Credit an on-chain deposit to ``owner``'s spot balance (hot wallet -> user)."""
        self.ledger.transfer(TransferRequest(
            id=transfer_id, debit_account=self.ledger_account(WALLET),
            credit_account=self.ledger_account(f"a:{owner}"), amount=amount, asset=self.asset))

    def ledger_balance(self, key: str) -> int:
        """Return the posted credit balance of a key's ledger account."""
        return self.ledger.balance(self.ledger_account(key)).credit_balance_posted

    def ledger_hold(self, account: str) -> int:
        """Return the pending (held) amount of an account's margin hold."""
        return self.ledger.balance(self.ledger_account(f"h:{account}")).credits_pending


def _account_of(key: str) -> tuple[str, AccountKind, int | None]:
    """Map a clearing key to (owner, kind, flags); None flags: the kind's default."""
    if key == CLEARING:
        # The clearing account's balance is minus the open positions' cost basis: it goes
        # negative while losers have not realised yet, so it carries no balance constraint.
        return CLEARING_OWNER, AccountKind.USER_MARGIN, int(AccountFlags.NONE)
    if key == FEES:
        return PLATFORM_OWNER, AccountKind.FEES, None
    if key == INSURANCE:
        return PLATFORM_OWNER, AccountKind.INSURANCE_FUND, None
    if key == WALLET:
        return WALLET_OWNER, AccountKind.HOT_WALLET, None
    prefix, owner = key.split(":", 1)
    if prefix == "m":
        # Cross margin: the wallet balance may dip below zero while unrealised gains keep
        # equity positive; the clearing house (not a ledger flag) enforces margin.
        return owner, AccountKind.USER_MARGIN, int(AccountFlags.NONE)
    if prefix == "h":
        return owner, AccountKind.USER_HELD, None
    if prefix == "a":
        return owner, AccountKind.USER_AVAILABLE, None
    raise ValueError(f"clearing key was {key!r}, not a known account key")
