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
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import select

from custody.audit.codes import AuditError
from custody.audit.verify import verify_export
from custody.bundles.bitcoin import DEFAULT_FEE_CAP_SAT as BTC_COLD_FEE_CAP_SAT
from custody.bundles.models import ColdBundle
from custody.chains.bitcoin.models import BitcoinColdSpend
from custody.chains.bitcoin.network import script_of as btc_script_of
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.ledger.entry import AccountFlags, AccountKind
from custody.ledger.models import LedgerTransfer
from custody.ledger.service import AccountView
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt
from custody.wallets.wallet import Temperature
from custody.withdrawals.models import WithdrawalRequest
from strongroom.simulation.world import (
    ALL_ASSETS,
    ASSETS,
    BTC,
    World,
    destination_for,
    eth_head,
    token_slot_value,
)

LIVE_STATES = frozenset({"pending_approval", "delayed", "approved", "awaiting_signature", "broadcasting"})
VOIDED_STATES = frozenset({"rejected", "cancelled", "blocked", "failed"})
SENT_STATES = frozenset({"broadcasting", "completed"})
RESOLUTION_BATCH = 500  # hold ids per IN (...) query
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


def cache_of(world: World) -> dict[str, Any]:
    """Return the reads shared by one round of checks. A stand-in world (tests/e2e's views over a real
    platform) may have no cache yet: it gets one."""
    cache: dict[str, Any] | None = getattr(world, "check_cache", None)
    if cache is None:
        cache = {}
        with contextlib.suppress(AttributeError):
            world.check_cache = cache
    return cache


def has_bitcoin(world: World) -> bool:
    """Whether ``world`` runs the Bitcoin chain (a stand-in world over an Ethereum-only platform does not:
    the Bitcoin checks have nothing to check there)."""
    return getattr(world, "btc", None) is not None and getattr(world.svc, "btc_runtime", None) is not None


def accounts(world: World) -> list[AccountView]:
    """Return every ledger account, read once per round of checks (``check`` clears the cache)."""
    found = cache_of(world).get("accounts")
    if found is None:
        found = world.svc.ledger.list_accounts()
        cache_of(world)["accounts"] = found
    return list(found)


def custody_rows(world: World) -> tuple[list[WithdrawalRequest], list[ChainTransaction],
                                        list[ChainTransactionAttempt]]:
    """Return every withdrawal, outgoing chain transaction and signed attempt, read once per round."""
    found = cache_of(world).get("rows")
    if found is None:
        with world.svc.app.extensions["strongroom.sessions"]() as session:
            found = (list(session.scalars(select(WithdrawalRequest))),
                     list(session.scalars(select(ChainTransaction))),
                     list(session.scalars(select(ChainTransactionAttempt))))
        cache_of(world)["rows"] = found
    return found


def ledger_zero_sum(world: World) -> list[Violation]:
    """Per asset, posted debits equal posted credits and pending debits equal pending credits."""
    totals: dict[str, list[int]] = {}
    for a in accounts(world):
        t = totals.setdefault(a.asset, [0, 0])
        t[0] += a.balance.debits_posted - a.balance.credits_posted
        t[1] += a.balance.debits_pending - a.balance.credits_pending
    return [Violation("ledger_zero_sum", f"{asset}: posted sum {p}, pending sum {q}")
            for asset, (p, q) in sorted(totals.items()) if p or q]


def constrained_accounts_non_negative(world: World) -> list[Violation]:
    """No account with a balance constraint is overdrawn, counting its pending amounts."""
    out = []
    for a in accounts(world):
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
    in_flight = {a.id for a in accounts(world)
                 if a.owner == "platform" and a.kind == AccountKind.WITHDRAWALS_IN_FLIGHT}
    out = []
    rows = custody_rows(world)[0]
    with sessions() as session:
        holds = {t.id for t in session.scalars(select(LedgerTransfer).where(
            LedgerTransfer.kind == "pending", LedgerTransfer.credit_account_id.in_(in_flight)))}
        # Only the resolutions of these holds (not every resolved transfer of the ledger, which grows).
        wanted = sorted(holds | {row.hold_transfer_id for row in rows if row.hold_transfer_id})
        resolutions = {}
        for start in range(0, len(wanted), RESOLUTION_BATCH):
            resolutions.update({t.pending_id: t.kind for t in session.scalars(select(LedgerTransfer).where(
                LedgerTransfer.pending_id.in_(wanted[start:start + RESOLUTION_BATCH])))})
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
            out.append(Violation("hold_matches_withdrawal",
                                 f"{row.asset} withdrawal {row.id} ({row.state}) has no hold"))
        elif resolved not in allowed:
            out.append(Violation("hold_matches_withdrawal", f"{row.asset} withdrawal {row.id} is {row.state} "
                                 f"but its hold is {resolved or 'pending'}"))
    for hold in sorted(holds):
        owner = by_hold.get(hold)
        if resolutions.get(hold) is None and (owner is None or owner.state not in LIVE_STATES):
            state = owner.state if owner else "missing"
            out.append(Violation("hold_matches_withdrawal",
                                 f"hold {hold} is pending but its withdrawal is {state}"))
    return out


def no_double_send(world: World) -> list[Violation]:
    """Each withdrawal has at most one chain transaction, and no trader's destination received more
    on chain than their withdrawals that were sent."""
    out = []
    rows, txs, _ = custody_rows(world)
    by_hold: dict[str, int] = {}
    for tx in txs:
        if tx.hold_transfer_id:
            by_hold[tx.hold_transfer_id] = by_hold.get(tx.hold_transfer_id, 0) + 1
    for hold, n in sorted(by_hold.items()):
        if n > 1:
            out.append(Violation("no_double_send", f"hold {hold} has {n} chain transactions"))
    for trader in world.traders:
        for asset in ALL_ASSETS if has_bitcoin(world) else ASSETS:
            destination = destination_for(trader, asset)
            sent = sum(r.amount for r in rows if r.username == trader and r.asset == asset
                       and r.state in SENT_STATES)
            received = chain_balance(world, destination, asset)
            if received > sent:
                out.append(Violation("no_double_send", f"{trader}'s destination received {received} {asset} "
                                     f"on chain, withdrawals sent total {sent}"))
    return out


def chain_balance(world: World, address: str, asset: str) -> int:
    """Return ``address``'s balance at the chain head, cached per head block (checks read a lot)."""
    if asset == BTC:
        return btc_balances(world).get(bytes(btc_script_of(address).data), 0)
    head = eth_head(world)
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


def btc_balances(world: World) -> dict[bytes, int]:
    """Return the confirmed value per output script at the Bitcoin tip (the node's UTXO set, read once
    per round of checks: a reorg or a block between two checks is seen by the next round)."""
    found: dict[bytes, int] | None = cache_of(world).get("btc")
    if found is None:
        found = {}
        for coin in world.btc._utxos.values():  # the simulator reads its own node's state
            found[coin.script] = found.get(coin.script, 0) + coin.value_sat
        cache_of(world)["btc"] = found
    return found


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
        # Through the node (EthereumAdapter's own read), not the simulated node's shortcut.
        expected = EthereumAdapter.balance(adapter, probe, asset)
        slot = next((s for s in range(MAX_TOKEN_SLOT)
                     if expected and token_slot_value(world, token, probe, s) == expected), -1)
        world.token_slot = slot
    if slot < 0:
        return adapter.balance(address, asset)
    return token_slot_value(world, token, checksum, slot)


def fees_within_cap(world: World) -> list[Violation]:
    """No signed version of an outgoing Ethereum transaction offers more than the fee cap per gas,
    whatever the node quoted (a fee spike), and no mined one paid more than its gas limit at the cap."""
    cap = world.svc.runtime.executor.config.fee_cap_wei
    _, txs, all_attempts = custody_rows(world)
    ours = {t.id for t in txs if t.chain == "ethereum"}
    # U256 is text on SQLite: compare in Python, not in SQL.
    attempts = [t for t in all_attempts if t.transaction_id in ours and t.max_fee_per_gas > cap]
    paid = [t for t in txs if t.chain == "ethereum" and t.fee_paid_minor is not None]
    out = [Violation("fees_within_cap", f"attempt {t.txid} of {t.transaction_id} offers {t.max_fee_per_gas} "
                     f"wei/gas, cap {cap}") for t in attempts]
    out += [Violation("fees_within_cap", f"transaction {t.id} paid {t.fee_paid_minor} wei for gas limit "
                      f"{t.gas_limit} at cap {cap}")
            for t in paid if t.fee_paid_minor is not None and t.fee_paid_minor > t.gas_limit * cap]
    return out


def btc_fees_within_cap(world: World) -> list[Violation]:
    """No signed version of an outgoing Bitcoin transaction offers more than the hot executor's fee-rate
    cap (sat/vB) or its per-transaction fee cap, whatever the node estimated (a fee spike), no mined
    one paid more than that cap, and no cold spend (PSBT) or cold bundle pays more than the cold cap."""
    if not has_bitcoin(world):
        return []
    policy = world.svc.btc_runtime.spender.fees
    _, txs, all_attempts = custody_rows(world)
    ours = {t.id for t in txs if t.chain == "bitcoin"}
    attempts = [t for t in all_attempts if t.transaction_id in ours]
    paid = [t for t in txs if t.chain == "bitcoin" and t.fee_paid_minor is not None]
    with world.svc.app.extensions["strongroom.sessions"]() as session:
        spends = session.scalars(select(BitcoinColdSpend)).all()
        bundles = session.scalars(select(ColdBundle).where(ColdBundle.chain == "bitcoin",
                                                           ColdBundle.fee_paid_minor.is_not(None))).all()
    # A Bitcoin attempt stores its fee rate (sat/vB) as max_fee_per_gas and its fee (sat) as the tip.
    out = [Violation("btc_fees_within_cap", f"attempt {t.txid} of {t.transaction_id} offers "
                     f"{t.max_fee_per_gas} sat/vB, fee {t.max_priority_fee_per_gas} sat; caps "
                     f"{policy.cap_sat_vb} sat/vB, {policy.max_fee_sat} sat")
           for t in attempts if t.max_fee_per_gas > policy.cap_sat_vb or t.max_priority_fee_per_gas >
           policy.max_fee_sat]
    out += [Violation("btc_fees_within_cap", f"transaction {t.id} paid {t.fee_paid_minor} sat, cap "
                      f"{policy.max_fee_sat}")
            for t in paid if t.fee_paid_minor is not None and t.fee_paid_minor > policy.max_fee_sat]
    out += [Violation("btc_fees_within_cap", f"cold spend {c.id} pays {c.fee_sat} sat, "
                      f"cap {BTC_COLD_FEE_CAP_SAT}")
            for c in spends if c.fee_sat > BTC_COLD_FEE_CAP_SAT]
    out += [Violation("btc_fees_within_cap", f"cold bundle {b.bundle_id} paid {b.fee_paid_minor} sat, cap "
                      f"{BTC_COLD_FEE_CAP_SAT}")
            for b in bundles if b.fee_paid_minor is not None and b.fee_paid_minor > BTC_COLD_FEE_CAP_SAT]
    return out


def claims_covered_by_holdings(world: World) -> list[Violation]:
    """Jepsen's bank check: what customers (and the exchange) may claim never exceeds what the
    platform holds on chain. Unconfirmed deposits are not claims; held withdrawals are not."""
    svc = world.svc
    claims: dict[str, int] = {asset: 0 for asset in ALL_ASSETS}
    for a in accounts(world):
        if a.kind in CLAIM_KINDS and a.asset in claims:
            b = a.balance
            claims[a.asset] += b.credits_posted - b.debits_posted - b.debits_pending
    holdings = {asset: 0 for asset in ALL_ASSETS}
    wallets = svc.runtime.wallets
    for wallet in wallets.list_wallets(svc.runtime.adapter.chain):
        for address in wallets.addresses(wallet.id):
            for asset in ASSETS:
                holdings[asset] += chain_balance(world, address.address, asset)
    holdings[BTC] = btc_holdings(world) if has_bitcoin(world) else claims[BTC]
    return [Violation("claims_covered_by_holdings",
                      f"{asset}: customer claims {claims[asset]} > on-chain holdings {holdings[asset]}")
            for asset in ALL_ASSETS if claims[asset] > holdings[asset]]


def btc_holdings(world: World) -> int:
    """Return what every address of the platform's Bitcoin wallets holds in confirmed coins at the tip."""
    wallets = world.svc.btc_runtime.wallets
    balances = btc_balances(world)
    scripts: set[bytes] | None = cache_of(world).get("btc_scripts")
    if scripts is None:
        scripts = {bytes(btc_script_of(a.address).data)
                    for wallet in wallets.list_wallets("bitcoin") for a in wallets.addresses(wallet.id)}
        cache_of(world)["btc_scripts"] = scripts
    return sum(balances.get(script, 0) for script in scripts)


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


def btc_chain_reconciles(world: World) -> list[Violation]:
    """Bitcoin: the UTXOs of our wallets at the reconciled height equal the ledger's wallet accounts
    plus what is in flight, wallet by wallet (the platform's reconciler, after a watcher round so it
    reconciles at the head), and the coins the reconciler counted are exactly the node's UTXO set of
    our addresses, read independently."""
    if not has_bitcoin(world):
        return []
    runtime = world.svc.btc_runtime
    runtime.watcher.tick()
    report = runtime.reconciler.run()
    out = [Violation("btc_chain_reconciles", f"{line['wallet']} {line['asset']}: on chain "
                     f"{line['on_chain']}, expected {line['expected']} (ledger {line['ledger_posted']}, "
                     f"in flight {line['in_flight']})")
           for line in report.lines if line["status"] != "ok"]
    counted = sum(int(line["on_chain"]) for line in report.lines)
    cache_of(world).pop("btc_scripts", None)  # the watcher round may have derived new addresses
    held = btc_holdings(world)
    if report.height == world.btc.height and counted != held:
        out.append(Violation("btc_chain_reconciles", f"the reconciler counted {counted} sat at height "
                             f"{report.height}, the node's UTXO set of our addresses holds {held} sat"))
    return out


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
    ("btc_fees_within_cap", btc_fees_within_cap),
    ("claims_covered_by_holdings", claims_covered_by_holdings),
    ("exchange_agrees_with_ledger", exchange_agrees_with_ledger),
    ("user_balance_not_negative", user_balance_not_negative),
)
AT_AUDIT: tuple[tuple[str, Check], ...] = (
    ("chain_reconciles", chain_reconciles),
    ("btc_chain_reconciles", btc_chain_reconciles),
    ("audit_export_verifies", audit_export_verifies),
)
AT_END: tuple[tuple[str, Check], ...] = (("settled_after_quiescence", settled_after_quiescence),)


def check(world: World, checks: tuple[tuple[str, Check], ...]) -> list[Violation]:
    """Run ``checks``; a check that raises is itself a violation (named after the check)."""
    out: list[Violation] = []
    cache_of(world).clear()  # what the last round read is stale now
    for name, fn in checks:
        try:
            out.extend(fn(world))
        except Exception as exc:  # a crash inside a check is a finding, not a harness error
            out.append(Violation(name, f"check raised {type(exc).__name__}: {exc}"))
    return out
