"""Builders shared by the exchange tests: a small instrument set and a ledger replica."""

from __future__ import annotations

import copy
from typing import Any

from exchange.instruments import ExchangeConfig, load_instruments, parse_config
from exchange.risk.clearing import Posting
from exchange.venue import Venue

BTC = 60_000_000_000  # 60,000 USDC per BTC in minor units
USDC = 1_000_000
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SOURCES = ("coinbase", "kraken", "bitstamp")


def config(**overrides: Any) -> ExchangeConfig:
    """Return the shipped configuration, optionally with instrument fields overridden."""
    import tomllib

    from exchange.instruments import DEFAULT_CONFIG

    data = tomllib.loads(DEFAULT_CONFIG.read_text())
    data = copy.deepcopy(data)
    for row in data["instrument"]:
        row.update(overrides)
    return parse_config(data)


def venue(insurance: int = 1_000 * USDC, accounts: dict[str, int] | None = None,
          btc: int = BTC, now_ms: int = NOW) -> Venue:
    """Return a venue with funded accounts and a fresh BTC/ETH index at ``now_ms``."""
    v = Venue(load_instruments())
    if insurance:
        v.seed_insurance(insurance)
    for name, amount in (accounts or {}).items():
        v.deposit(name, amount)
    move(v, "ETH", 3_000_000_000, now_ms)
    move(v, "BTC", btc, now_ms)
    return v


def move(v: Venue, underlying: str, price: int, now_ms: int) -> None:
    """Quote ``price`` from every source and tick the index."""
    for source in SOURCES:
        v.quote(underlying, source, price, now_ms)
    v.tick(underlying, now_ms)


class ReplicaLedger:
    """Apply postings the way the ledger would (balances by key, pending holds)."""

    def __init__(self) -> None:
        self.balance: dict[str, int] = {}
        self.pending: dict[str, tuple[str, str, int]] = {}
        self.held: dict[str, int] = {}
        self.ids: set[str] = set()

    def apply(self, postings: list[Posting]) -> None:
        for tid, kind, debit, credit, amount, pending_id in postings:
            assert tid not in self.ids, f"duplicate posting id {tid}"
            self.ids.add(tid)
            if kind == "single":
                self.balance[debit] = self.balance.get(debit, 0) - amount
                self.balance[credit] = self.balance.get(credit, 0) + amount
            elif kind == "pending":
                self.pending[tid] = (debit, credit, amount)
                self.held[credit] = self.held.get(credit, 0) + amount
            else:
                assert pending_id is not None
                _, c, a = self.pending.pop(pending_id)
                self.held[c] -= a

    def get(self, key: str) -> int:
        return self.balance.get(key, 0)


def agree(v: Venue, replica: ReplicaLedger) -> None:
    """Drain the venue into the replica and assert ledger == clearing house, everywhere."""
    postings, _ = v.drain()
    replica.apply(postings)
    ch = v.clearing
    ch.check_invariants()
    for acct in ch.accounts.values():
        assert replica.get(f"m:{acct.id}") == acct.cash, acct.id
        assert replica.held.get(f"h:{acct.id}", 0) == acct.hold, acct.id
    assert replica.get("clearing") == ch.clearing
    assert replica.get("fees") == ch.fees
    assert replica.get("insurance") == ch.insurance
    assert replica.get("bad_debt") == ch.bad_debt
    for acct in ch.accounts.values():
        if not any(p.size for p in acct.positions.values()):
            assert acct.cash >= 0, f"{acct.id} is flat with negative collateral {acct.cash}"
    assert ch.fees >= 0 and ch.insurance >= 0
    platform = sum(b for k, b in replica.balance.items() if not k.startswith("a:") and k != "wallet")
    assert platform == ch.external_in


def equity(v: Venue, account: str) -> int:
    ch = v.clearing
    return ch.valuation(ch.accounts[account])[0]
