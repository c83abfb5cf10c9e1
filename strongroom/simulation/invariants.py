"""Named invariants checked after every simulation step (cheap ones) or at audits (expensive ones).

Each check reads the platform the way an outsider would (the database, the
chain, the exchange's public state) and returns violations as values; the
runner stops at the first step with any violation and reports its name.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak
from sqlalchemy import select

from custody.audit.codes import AuditError
from custody.audit.verify import verify_export
from custody.ledger.entry import AccountFlags, AccountKind
from custody.ledger.models import LedgerTransfer
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt
from custody.wallets.wallet import Temperature
from custody.withdrawals.models import WithdrawalRequest
from strongroom.simulation.world import ASSETS, World, destination_of

LIVE_STATES = frozenset({"pending_approval", "delayed", "approved", "awaiting_signature", "broadcasting"})
VOIDED_STATES = frozenset({"rejected", "cancelled", "blocked", "failed"})
SENT_STATES = frozenset({"broadcasting", "completed"})
CLAIM_KINDS = frozenset({AccountKind.USER_AVAILABLE, AccountKind.USER_HELD, AccountKind.USER_MARGIN,
                         AccountKind.FEES, AccountKind.INSURANCE_FUND})


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its name and what was seen."""

    name: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"invariant": self.name, "message": self.message}


Check = Callable[[World], list[Violation]]


def ledger_zero_sum(world: World) -> list[Violation]:
    """Per asset, posted debits equal posted credits and pending debits equal pending credits."""
    totals: dict[str, list[int]] = {}
    for a in world.svc.ledger.list_accounts():
        t = totals.setdefault(a.asset, [0, 0])
        t[0] += a.balance.debits_posted - a.balance.credits_posted
        t[1] += a.balance.debits_pending - a.balance.credits_pending
    return [Violation("ledger_zero_sum", f"{asset}: posted sum {p}, pending sum {q}")
            for asset, (p, q) in sorted(totals.items()) if p or q]


def constrained_accounts_non_negative(world: World) -> list[Violation]:
    """No account with a balance constraint is overdrawn, counting its pending amounts."""
    out = []
    for a in world.svc.ledger.list_accounts():
        b = a.balance
        if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and \
                b.debits_posted + b.debits_pending > b.credits_posted:
            out.append(Violation("constrained_account_negative",
                                 f"account {a.id} {a.owner}/{a.asset}/{a.kind}: debits {b.debits_posted}"
                                 f"+{b.debits_pending} pending > credits {b.credits_posted}"))
        if a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS and \
                b.credits_posted + b.credits_pending > b.debits_posted:
            out.append(Violation("constrained_account_negative",
                                 f"account {a.id} {a.owner}/{a.asset}/{a.kind}: credits {b.credits_posted}"
                                 f"+{b.credits_pending} pending > debits {b.debits_posted}"))
    return out


def holds_match_withdrawals(world: World) -> list[Violation]:
    """Every live withdrawal has a live hold and every hold a live withdrawal; a completed withdrawal's
    hold is posted and a closed one's released. (The executor posts the hold when the transaction
    confirms and the dispatcher marks the withdrawal completed on its next round, so a
    ``broadcasting`` withdrawal may already have a posted hold, never a released one.)"""
    sessions = world.svc.app.extensions["strongroom.sessions"]
    in_flight = {a.id for a in world.svc.ledger.list_accounts(owner="platform")
                 if a.kind == AccountKind.WITHDRAWALS_IN_FLIGHT}
    out = []
    with sessions() as session:
        rows = session.scalars(select(WithdrawalRequest)).all()
        resolutions = {t.pending_id: t.kind for t in session.scalars(
            select(LedgerTransfer).where(LedgerTransfer.pending_id.is_not(None)))}
        holds = {t.id for t in session.scalars(select(LedgerTransfer).where(
            LedgerTransfer.kind == "pending", LedgerTransfer.credit_account_id.in_(in_flight)))}
    by_hold = {row.hold_transfer_id: row for row in rows}
    for row in rows:
        resolved = resolutions.get(row.hold_transfer_id)
        allowed: tuple[str | None, ...]
        if row.state == "broadcasting":
            allowed = (None, "post")
        elif row.state in LIVE_STATES:
            allowed = (None,)
        elif row.state == "completed":
            allowed = ("post",)
        else:
            allowed = ("void", "expire")
        if row.hold_transfer_id not in holds:
            out.append(Violation("hold_matches_withdrawal", f"withdrawal {row.id} ({row.state}) has no hold"))
        elif resolved not in allowed:
            out.append(Violation("hold_matches_withdrawal", f"withdrawal {row.id} is {row.state} but "
                                 f"its hold is {resolved or 'pending'}"))
    for hold in sorted(holds):
        row = by_hold.get(hold)
        if resolutions.get(hold) is None and (row is None or row.state not in LIVE_STATES):
            state = row.state if row else "missing"
            out.append(Violation("hold_matches_withdrawal",
                                 f"hold {hold} is pending but its withdrawal is {state}"))
    return out


def no_double_send(world: World) -> list[Violation]:
    """Each withdrawal has at most one chain transaction, and no trader's destination received more
    on chain than their withdrawals that were sent."""
    sessions = world.svc.app.extensions["strongroom.sessions"]
    out = []
    with sessions() as session:
        rows = session.scalars(select(WithdrawalRequest)).all()
        txs = session.scalars(select(ChainTransaction)).all()
    by_hold: dict[str, int] = {}
    for tx in txs:
        if tx.hold_transfer_id:
            by_hold[tx.hold_transfer_id] = by_hold.get(tx.hold_transfer_id, 0) + 1
    for hold, n in sorted(by_hold.items()):
        if n > 1:
            out.append(Violation("no_double_send", f"hold {hold} has {n} chain transactions"))
    for trader in world.traders:
        destination = destination_of(trader)
        for asset in ASSETS:
            sent = sum(r.amount for r in rows if r.username == trader and r.asset == asset
                       and r.state in SENT_STATES)
            received = chain_balance(world, destination, asset)
            if received > sent:
                out.append(Violation("no_double_send", f"{trader}'s destination received {received} {asset} "
                                     f"on chain, withdrawals sent total {sent}"))
    return out


def chain_balance(world: World, address: str, asset: str) -> int:
    """Return ``address``'s balance at the chain head, cached per head block (checks read a lot)."""
    head = world.chain.web3.eth.block_number
    cache = world.balance_cache
    if cache.get("head") != head:
        cache.clear()
        cache["head"] = head
    key = (address.lower(), asset)
    found = cache.get(key)
    if isinstance(found, int):
        return found
    balance = _read_balance(world, address, asset)
    cache[key] = balance
    return balance


MAX_TOKEN_SLOT = 10


def _read_balance(world: World, address: str, asset: str) -> int:
    """Read a balance straight from the embedded chain's state (an ``eth_call`` per token balance
    through web3 costs ~40 ms); the token's balance slot is found once against ``balanceOf``."""
    tester = world.chain.tester
    checksum = to_checksum_address(address)
    if asset == "ETH":
        return int(tester.get_balance(checksum))
    adapter = world.svc.runtime.adapter
    token = adapter.token_address(asset)
    slot = world.token_slot
    if slot is None:
        probe = world.svc.runtime.wallets.primary_address(
            world.svc.runtime.wallets.one(adapter.chain, Temperature.HOT).id).address
        expected = adapter.balance(probe, asset)
        slot = next((s for s in range(MAX_TOKEN_SLOT) if expected and _slot_value(tester, token, probe, s)
                     == expected), -1)
        world.token_slot = slot
    if slot < 0:
        return adapter.balance(address, asset)
    return _slot_value(tester, token, address, slot)


def _slot_value(tester: object, token: str, holder: str, slot: int) -> int:
    key = keccak(bytes(12) + to_canonical_address(holder) + slot.to_bytes(32, "big"))
    raw = tester.get_storage_at(token, "0x" + key.hex())  # type: ignore[attr-defined]
    return int(raw, 16) if isinstance(raw, str) else int.from_bytes(raw, "big")


def fees_within_cap(world: World) -> list[Violation]:
    """No signed version of an outgoing transaction offers more than the fee cap per gas, whatever the
    node quoted (a fee spike), and no mined one paid more than its gas limit at the cap."""
    cap = world.svc.runtime.executor.config.fee_cap_wei
    sessions = world.svc.app.extensions["strongroom.sessions"]
    with sessions() as session:
        # U256 is text on SQLite: compare in Python, not in SQL.
        attempts = [t for t in session.scalars(select(ChainTransactionAttempt)).all()
                    if t.max_fee_per_gas > cap]
        paid = session.scalars(select(ChainTransaction).where(
            ChainTransaction.fee_paid_minor.is_not(None))).all()
    out = [Violation("fees_within_cap", f"attempt {t.txid} of {t.transaction_id} offers {t.max_fee_per_gas} "
                     f"wei/gas, cap {cap}") for t in attempts]
    out += [Violation("fees_within_cap", f"transaction {t.id} paid {t.fee_paid_minor} wei for gas limit "
                      f"{t.gas_limit} at cap {cap}")
            for t in paid if t.fee_paid_minor is not None and t.fee_paid_minor > t.gas_limit * cap]
    return out


def claims_covered_by_holdings(world: World) -> list[Violation]:
    """Jepsen's bank check: what customers (and the exchange) may claim never exceeds what the
    platform holds on chain. Unconfirmed deposits are not claims; held withdrawals are not."""
    svc = world.svc
    claims: dict[str, int] = {asset: 0 for asset in ASSETS}
    for a in svc.ledger.list_accounts():
        if a.kind in CLAIM_KINDS and a.asset in claims:
            b = a.balance
            claims[a.asset] += b.credits_posted - b.debits_posted - b.debits_pending
    holdings = {asset: 0 for asset in ASSETS}
    wallets = svc.runtime.wallets
    for wallet in wallets.list_wallets(svc.runtime.adapter.chain):
        for address in wallets.addresses(wallet.id):
            for asset in ASSETS:
                holdings[asset] += chain_balance(world, address.address, asset)
    return [Violation("claims_covered_by_holdings",
                      f"{asset}: customer claims {claims[asset]} > on-chain holdings {holdings[asset]}")
            for asset in ASSETS if claims[asset] > holdings[asset]]


def exchange_agrees_with_ledger(world: World) -> list[Violation]:
    """The clearing house's identities hold, the ledger mirrors it, the fund is not negative and no
    book is crossed."""
    svc = world.svc.exchange
    out = []
    with svc.lock:
        try:
            svc.venue.clearing.check_invariants()
        except AssertionError as exc:
            out.append(Violation("exchange_collateral_conserved", str(exc)))
        if world.exchange_lag_steps > 0:
            world.exchange_lag_steps -= 1
            mismatches = []  # the ledger may lag the venue until the exchange's next flush
        else:
            mismatches = svc.reconcile()
        if mismatches:
            out.append(Violation("exchange_positions_equal_ledger", f"ledger differs on {mismatches[:5]}"))
        if svc.venue.clearing.insurance < 0:
            out.append(Violation("insurance_fund_not_negative", f"insurance {svc.venue.clearing.insurance}"))
        for symbol, book in sorted(svc.venue.books.items()):
            bid, ask = book.best_bid(), book.best_ask()
            if bid is not None and ask is not None and bid >= ask:
                out.append(Violation("book_not_crossed", f"{symbol}: best bid {bid} >= best ask {ask}"))
    return out


TRADING_OPS = frozenset({"order", "collude"})


FUND = "<insurance>"
BAD_DEBT = "<bad_debt>"


def equities(world: World) -> dict[str, int]:
    """Return every exchange account's equity at the current marks, plus the fund and bad debt."""
    clearing = world.svc.exchange.venue.clearing
    with world.svc.exchange.lock:
        found = {a.id: clearing.valuation(a)[0] for a in clearing.accounts.values()}
        found[FUND] = clearing.insurance
        found[BAD_DEBT] = clearing.bad_debt
        return found


def fill_violations(world: World, action: dict[str, object], before: dict[str, int]) -> list[Violation]:
    """Trading at unchanged marks never leaves an account's equity negative, and never costs the
    insurance fund or the platform (bad debt): whatever colluders gain, a counterparty who chose
    to trade paid, not the platform."""
    after = equities(world)
    out = [Violation("fill_leaves_equity_non_negative",
                     f"{acct}: equity {before.get(acct, 0)} -> {equity} after {action['op']}")
           for acct, equity in sorted(after.items())
           if acct not in (FUND, BAD_DEBT) and equity < 0 <= before.get(acct, 0)]
    for key in (FUND, BAD_DEBT):
        if after[key] < before[key]:
            out.append(Violation("fills_cost_the_platform_nothing",
                                 f"{key} {before[key]} -> {after[key]} after {action['op']} {action}"))
    return out


def user_balance_not_negative(world: World) -> list[Violation]:
    """No flat exchange account is left with negative collateral (losses are socialised, not left)."""
    clearing = world.svc.exchange.venue.clearing
    return [Violation("user_balance_not_negative", f"{a.id}: flat with collateral {a.cash}")
            for a in clearing.accounts.values()
            if a.cash < 0 and not any(p.size for p in a.positions.values())]


def chain_reconciles(world: World) -> list[Violation]:
    """On-chain holdings equal the ledger's wallet accounts plus what is in flight.

    As the server's jobs do, the deposit watcher runs a round first, so a reorg since its last
    round is noticed before the reconciler compares (otherwise every reorg would be a finding)."""
    world.svc.runtime.watcher.tick()
    report = world.svc.runtime.reconciler.run()
    bad = [line for line in report.lines if line["status"] != "ok"]
    return [Violation("chain_reconciles", f"{line['wallet']} {line['asset']}: on chain {line['on_chain']}, "
                      f"expected {line['expected']}") for line in bad]


def audit_export_verifies(world: World) -> list[Violation]:
    """A fresh export of the ledger verifies strictly against the keys pinned at setup; after an
    insider's database edit (``insider`` fault) it must *fail*: the auditor catches the insider."""
    audit = world.svc.audit()
    # The auditor asks for a checkpoint first, so every entry is signed and nothing is downgraded
    # (refused only when nothing is new since the last one).
    with contextlib.suppress(AuditError):
        audit.create_checkpoint()
    with tempfile.TemporaryDirectory(prefix="sim-export-") as tmp:
        target = Path(tmp) / "export"
        audit.export(target)
        report = verify_export(target, world.pinned_keys or None)
    if world.tampered:
        return [] if report.failures else [Violation(
            "audit_detects_insider", "an insider overdrew an account through the database and the "
            "export still verifies")]
    return [Violation("audit_export_verifies", f"{f.code}: {f.message}") for f in report.failures[:5]]


def settled_after_quiescence(world: World) -> list[Violation]:
    """After the chain and the jobs have run on without new requests, every outgoing transaction is
    final and no approved withdrawal is left unsent (Jepsen's final read after healing)."""
    sessions = world.svc.app.extensions["strongroom.sessions"]
    with sessions() as session:
        open_txs = session.scalars(select(ChainTransaction).where(
            ChainTransaction.status.not_in(("confirmed", "failed")))).all()
        # A cold withdrawal waits for people (export, the signer, import); a hot one for nobody.
        stuck = session.scalars(select(WithdrawalRequest).where(
            WithdrawalRequest.state.in_(("approved", "broadcasting")),
            WithdrawalRequest.source_wallet == "hot")).all()
    out = [Violation("settled_after_quiescence", f"transaction {t.id} still {t.status}: {t.note[:160]}")
           for t in open_txs]
    out += [Violation("settled_after_quiescence", f"withdrawal {w.id} still {w.state}") for w in stuck]
    return out


EVERY_STEP: tuple[tuple[str, Check], ...] = (
    ("ledger_zero_sum", ledger_zero_sum),
    ("constrained_accounts_non_negative", constrained_accounts_non_negative),
    ("holds_match_withdrawals", holds_match_withdrawals),
    ("no_double_send", no_double_send),
    ("fees_within_cap", fees_within_cap),
    ("claims_covered_by_holdings", claims_covered_by_holdings),
    ("exchange_agrees_with_ledger", exchange_agrees_with_ledger),
    ("user_balance_not_negative", user_balance_not_negative),
)
AT_AUDIT: tuple[tuple[str, Check], ...] = (
    ("chain_reconciles", chain_reconciles),
    ("audit_export_verifies", audit_export_verifies),
)
AT_END: tuple[tuple[str, Check], ...] = (("settled_after_quiescence", settled_after_quiescence),)


def check(world: World, checks: tuple[tuple[str, Check], ...]) -> list[Violation]:
    """Run ``checks``; a check that raises is itself a violation (named after the check)."""
    out: list[Violation] = []
    for name, fn in checks:
        try:
            out.extend(fn(world))
        except Exception as exc:  # a crash inside a check is a finding, not a harness error
            out.append(Violation(name, f"check raised {type(exc).__name__}: {exc}"))
    return out
