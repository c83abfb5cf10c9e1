"""The actors: what traders, treasury, the auditor, the market, the chain and faults may do.

Every step is an :class:`Action`, a plain JSON-ready dict chosen by the seeded
scheduler (:func:`choose`) and carried out by :func:`apply`. Actions name what
they touch by stable handles (trader names, idempotency keys) rather than by
ids the platform generated, so a trace with steps removed still replays: an
action whose target does not exist any more simply does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from exchange.journal import list_segments
from strongroom.simulation import cold
from strongroom.simulation.client import Reply, withdrawal_subject
from strongroom.simulation.world import (
    AUDITOR,
    BTC,
    BTC_CONFIRMATIONS,
    BTC_START_HEIGHT,
    CONFIRMATIONS,
    TREASURY,
    World,
    btc_weather,
    deliver_stalled,
    destination_for,
    eth_head,
    mine_btc,
)

Action = dict[str, Any]

ETH = 10**18
USDC = 10**6
SAT_PER_BTC = 10**8
CHAINS = ("ethereum", "bitcoin")
CUSTODY_ASSETS = ("ETH", "USDC", BTC)
PRICE_START = {"BTC": 60_000 * USDC, "ETH": 3_000 * USDC}
PERP_WEIGHT = 4  # a perpetual is this many times likelier to be picked than a dated instrument
MAX_SNAPSHOTS = 16  # chain snapshots kept for reorgs

# Faults the scheduler may inject; ``--faults`` picks a subset (default: all of DEFAULT_FAULTS).
FAULTS = ("crash", "torn_tail", "duplicate", "clock_jump", "expiry", "reorg", "deep_reorg", "ledger_outage",
          "broadcast_crash", "concurrent", "insider", "db_fault", "clock_skew", "reorder", "stuck_tx",
          "fee_spike")
DEFAULT_FAULTS = ("crash", "torn_tail", "duplicate", "clock_jump", "expiry", "reorg", "ledger_outage",
                  "broadcast_crash", "db_fault", "clock_skew", "reorder", "stuck_tx", "fee_spike")

# Actions on a withdrawal a trader asked for earlier (named by trader and idempotency key).
KEYED_OPS = frozenset({"withdraw_retry", "cancel", "approve", "reject", "export_bundle", "sign_bundle",
                       "import_bundle"})
# (op, weight, fault that enables it or None)
WEIGHTS: tuple[tuple[str, int, str | None], ...] = (
    ("deposit", 8, None), ("mine", 10, None), ("btc_mine", 6, None), ("wallet_tick", 8, None),
    ("consolidate", 3, None),
    ("withdraw", 8, None), ("withdraw_retry", 3, None), ("cancel", 2, None),
    ("approve", 5, None), ("reject", 1, None), ("dispatch", 6, None), ("release_due", 2, None),
    ("rebalance", 2, None), ("export_bundle", 3, None), ("sign_bundle", 3, None), ("import_bundle", 3, None),
    ("collateral", 5, None), ("order", 12, None), ("make_market", 6, None), ("collude", 3, None),
    ("cancel_orders", 2, None),
    ("quote", 8, None), ("market_tick", 4, None), ("clock", 4, None),
    ("checkpoint", 2, None), ("audit", 1, None), ("expire_holds", 1, None),
    ("crash", 1, "crash"), ("torn_tail", 1, "torn_tail"), ("duplicate", 3, "duplicate"),
    ("clock_jump", 1, "clock_jump"),
    ("expiry_jump", 1, "expiry"), ("reorg", 2, "reorg"), ("deep_reorg", 1, "deep_reorg"),
    ("ledger_outage", 1, "ledger_outage"), ("concurrent_withdraw", 3, "concurrent"),
    ("insider_overdraft", 1, "insider"), ("broadcast_crash", 2, "broadcast_crash"),
    ("db_fault", 4, "db_fault"), ("clock_skew", 1, "clock_skew"), ("reorder", 2, "reorder"),
    ("stuck_tx", 1, "stuck_tx"), ("fee_spike", 1, "fee_spike"), ("race", 3, "concurrent"),
)


@dataclass
class Model:
    """What the actors remember; changed only by :func:`apply`, so a replay rebuilds it exactly."""

    # trader -> [(idempotency key, asset, amount)]
    keys: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    prices: dict[str, int] = field(default_factory=lambda: dict(PRICE_START))
    orders: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # trader -> (symbol, order id)
    snapshots: list[tuple[int, Any]] = field(default_factory=list)  # (height, chain snapshot id)
    last_request: Action | None = None
    counter: int = 0
    audit_due: bool = False
    market_ran_ms: int = 0
    exported: dict[str, list[bytes]] = field(default_factory=dict)  # withdrawal id -> bundles
    signed: dict[str, list[bytes]] = field(default_factory=dict)  # withdrawal id -> signed answers

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


def choose(rng: random.Random, world: World, model: Model, faults: frozenset[str]) -> Action:
    """Pick the next action for the seeded scheduler."""
    ops = [(op, w) for op, w, fault in WEIGHTS if fault is None or fault in faults]
    op = rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
    return build(op, rng, world, model)


def build(op: str, rng: random.Random, world: World, model: Model) -> Action:
    """Build a random action of kind ``op`` (reads the platform, never changes it or the model)."""
    trader = rng.choice(world.traders)
    if op in faults.BUILDERS:
        return faults.BUILDERS[op](rng, world, model, trader)
    if op == "deposit":
        asset = rng.choice(CUSTODY_ASSETS)
        amount = {"ETH": rng.randint(1, 300) * ETH // 100, "USDC": rng.randint(100, 30_000) * USDC,
                  BTC: rng.randint(1, 50) * SAT_PER_BTC // 100}[asset]
        return {"op": op, "trader": trader, "asset": asset, "amount": amount}
    if op in ("mine", "btc_mine"):
        return {"op": op, "blocks": rng.randint(1, 3)}
    if op in ("wallet_tick", "dispatch"):
        return {"op": op, "chain": rng.choice(CHAINS)}
    if op == "consolidate":
        return {"op": op, "asset": rng.choice(CUSTODY_ASSETS)}
    if op == "withdraw":
        asset = rng.choice(CUSTODY_ASSETS)
        available = _available(world, trader, asset)
        unit = {"ETH": ETH // 10, "USDC": 1000 * USDC, BTC: SAT_PER_BTC // 100}[asset]
        # Mostly affordable amounts, sometimes all of it, sometimes more than there is.
        amount = max(1, rng.choice((available // 4, available // 2, available, available + 1,
                                    rng.randint(1, 5) * unit)))
        key = f"{trader}-{rng.random():.6f}"
        new: Action = {"op": op, "trader": trader, "asset": asset, "amount": amount, "key": key}
        if rng.random() < 0.25:
            new["source"] = "cold"  # two treasury approvals, then the offline signer
        return new
    if op == "rebalance":
        return {"op": op, "asset": rng.choice(CUSTODY_ASSETS)}
    if op in KEYED_OPS:
        known = [(t, k) for t in world.traders for k in model.keys.get(t, [])]
        if not known:
            return {"op": "clock", "ms": 1_000}
        owner, (key, asset, amount) = rng.choice(known)
        action: Action = {"op": op, "trader": owner, "key": key}
        if op == "withdraw_retry":
            # The same key with the same body (a retry) or a different amount (a lying retry).
            lie = rng.random() >= 0.7
            action.update(asset=asset, amount=amount + rng.randint(1, 10**6) if lie else amount)
        if op in ("approve", "reject"):
            action["approver"] = rng.choice(TREASURY)
        if op == "sign_bundle":
            # Usually at once, sometimes hours later (the bundle may have expired by then).
            action["late_ms"] = rng.choice((0, 0, 0, 60_000, 6 * 3_600_000, 30 * 3_600_000))
            # Which offline machine: the Ethereum cold key is cosigner 0's; Bitcoin needs two of three.
            action["cosigner"] = rng.choice((0, 0, 1, 2))
        if op == "import_bundle":
            action["which"] = rng.choice((-1, -1, 0))  # the newest answer, or an older one again
        return action
    if op == "collateral":
        direction = rng.choice(("deposit", "withdraw"))
        available = _available(world, trader, "USDC") if direction == "deposit" else _margin(world, trader)
        amount = max(1, rng.choice((available // 3, available, available + 1, rng.randint(1, 5_000) * USDC)))
        return {"op": op, "trader": trader, "direction": direction, "amount": amount}
    if op == "order":
        return _order(rng, world, trader)
    if op == "collude":
        a, b = rng.sample(world.traders, 2) if len(world.traders) > 1 else (trader, trader)
        symbol = _symbol(rng, world)
        # Far from the mark, at the band's edge: the loss lands on one colluder, the gain on the other.
        price = _band_price(world, symbol, rng.choice((-1, 1)) * rng.randint(5_000, 9_900))
        qty = rng.choice((1, 10, 50)) if _is_option(world, symbol) else rng.choice((5, 50, 500, 3_000))
        action = {"op": op, "seller": a, "buyer": b, "symbol": symbol, "qty": qty, "price": price}
        if rng.random() < 0.25:
            action["margin_mode"] = "isolated"
        return action
    if op == "make_market":
        symbol = _symbol(rng, world)
        spread = rng.randint(20, 800)  # per 10,000 of the band on each side
        qty = rng.choice((1, 5, 20)) if _is_option(world, symbol) else rng.choice((50, 200, 1_000))
        return {"op": op, "trader": trader, "symbol": symbol, "qty": qty,
                "bid": _band_price(world, symbol, -spread), "ask": _band_price(world, symbol, spread)}
    if op == "expiry_jump":
        return {"op": op, "before_ms": rng.choice((0, 60_000, 10 * 60_000, 25 * 60_000, 45 * 60_000))}
    if op == "cancel_orders":
        return {"op": op, "trader": trader}
    if op == "quote":
        return _quote(rng, model)
    if op == "clock":
        return {"op": op, "ms": rng.choice((1_000, 5_000, 60_000, 600_000, 3_600_000))}
    if op == "clock_jump":
        return {"op": op, "ms": rng.choice((8 * 3_600_000, 86_400_000, 3 * 86_400_000))}
    if op == "reorg":
        if rng.random() < 0.5:
            # Bitcoin: unconfirmed blocks (their transactions dropped, as a double-spending branch
            # would, or back to the mempool), or settled ones whose transactions the new branch
            # mines again (the common real reorg: no coin is lost, the platform must not double-count).
            settled = rng.random() < 0.3
            depth = rng.randint(BTC_CONFIRMATIONS, BTC_CONFIRMATIONS + 2) if settled else \
                rng.randint(1, max(1, BTC_CONFIRMATIONS - 1))
            return {"op": op, "chain": "bitcoin", "depth": depth, "drop": not settled and rng.random() < 0.5}
        return {"op": op, "depth": rng.randint(1, CONFIRMATIONS - 1) if CONFIRMATIONS > 1 else 1}
    if op == "deep_reorg":
        if rng.random() < 0.5:
            return {"op": "reorg", "chain": "bitcoin", "drop": True,
                    "depth": rng.randint(BTC_CONFIRMATIONS, BTC_CONFIRMATIONS + 3)}
        return {"op": op, "depth": rng.randint(CONFIRMATIONS, CONFIRMATIONS + 3)}
    if op == "ledger_outage":
        return {"op": op, "trader": trader, "amount": max(1, _available(world, trader, "USDC") // 2),
                "lag": rng.randint(0, 6)}
    if op == "concurrent_withdraw":
        asset = rng.choice(CUSTODY_ASSETS)
        amount = max(1, _available(world, trader, asset) // rng.choice((2, 3, 10)))
        return {"op": op, "trader": trader, "asset": asset, "amount": amount,
                "key": f"{trader}-c{rng.random():.6f}", "copies": rng.randint(2, 4)}
    if op == "broadcast_crash":
        return {"op": op, "round": rng.choice(("dispatch", "wallet")), "chain": rng.choice(CHAINS)}
    if op == "insider_overdraft":
        return {"op": op, "trader": trader, "asset": rng.choice(CUSTODY_ASSETS),
                "extra": rng.randint(1, 10**9)}
    if op == "torn_tail":
        return {"op": op, "garbage": rng.randbytes(rng.randint(1, 40)).hex()}
    return {"op": op}


def _round(price: int, tick: int) -> int:
    return max(tick, price // tick * tick)


def _is_option(world: World, symbol: str) -> bool:
    return world.svc.exchange.venue.specs[symbol].is_option


def _band_price(world: World, symbol: str, per_10k_of_band: int) -> int:
    """Return a price ``per_10k_of_band``/10,000 of the way from the reference to the band's edge."""
    venue = world.svc.exchange.venue
    spec = venue.specs[symbol]
    ref = venue.books[symbol].reference_price or venue.clearing.marks.get(symbol) or spec.tick_size
    width = ref * spec.band_bps // 10_000
    return _round(ref + width * per_10k_of_band // 10_000, spec.tick_size)


def _symbol(rng: random.Random, world: World) -> str:
    """Pick a trading instrument (the listing calendar decides which exist); perpetuals mostly."""
    venue = world.svc.exchange.venue
    trading = sorted(s for s, spec in venue.specs.items() if venue.clearing.trading.get(s))
    weights = [PERP_WEIGHT if venue.specs[s].kind == "perpetual" else 1 for s in trading]
    return rng.choices(trading, weights=weights)[0] if trading else "BTC-PERP"


def _order(rng: random.Random, world: World, trader: str) -> Action:
    symbol = _symbol(rng, world)
    side = rng.choice(("buy", "sell"))
    kind = rng.choice(("limit", "limit", "limit", "market"))
    sizes = (1, 5, 20, 50) if _is_option(world, symbol) else (1, 5, 20, 100, 500, 2_000, 6_000)
    action: Action = {"op": "order", "trader": trader, "symbol": symbol, "side": side,
                      "qty": rng.choice(sizes), "type": kind}
    if kind == "limit":
        action["price"] = _band_price(world, symbol, rng.randint(-9_500, 9_500))  # anywhere in the band
        action["tif"] = rng.choice(("GTC", "GTC", "IOC", "POST_ONLY" if rng.random() < 0.1 else "GTC"))
    else:
        action["tif"] = "IOC"
    roll = rng.random()
    if roll < 0.1:
        action["reduce_only"] = True
    elif roll < 0.2:
        action["margin_mode"] = "isolated"
    return action


def _quote(rng: random.Random, model: Model) -> Action:
    underlying = rng.choice(("BTC", "ETH"))
    price = model.prices[underlying]
    jump = rng.random() < 0.08
    move_bps = rng.choice((-1, 1)) * rng.randint(500, 2_500) if jump else rng.randint(-60, 60)
    new_price = max(USDC, price * (10_000 + move_bps) // 10_000)
    # Sometimes the sources fall silent: the index goes stale and new risk halts.
    return {"op": "quote", "underlying": underlying, "price": new_price, "silent": rng.random() < 0.1}


def _available(world: World, owner: str, asset: str) -> int:
    account = world.svc.ledger.find_account(owner, asset, "user_available")
    return 0 if account is None else account.balance.credit_balance_available


def _margin(world: World, owner: str) -> int:
    acct = world.svc.exchange.venue.clearing.accounts.get(owner)
    return 0 if acct is None else max(0, acct.cash)


def withdrawal_id(trader: str, key: str) -> str:
    """Return the withdrawal id the API derives from a trader's idempotency key."""
    return "wd_" + hashlib.sha256(f"{trader}\n{key}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------- apply


def apply(world: World, model: Model, action: Action) -> str:
    """Carry out ``action``; return a short outcome for the trace. Refusals are outcomes, not errors."""
    handler = HANDLERS[action["op"]]
    remember_head(world, model)
    deliver_stalled(world)
    btc_weather(world)
    if world.clock.now_ms != model.market_ran_ms:
        # The server's market job runs every second: whatever time passed, it ran before this step.
        world.svc.market.run_due()
        model.market_ran_ms = world.clock.now_ms
    return handler(world, model, action)


def _api(world: World, model: Model, who: str, method: str, path: str, body: Any = None, *,
         mfa: bool = False, key: str | None = None, remember: bool = True) -> Reply:
    if remember:
        model.last_request = {"who": who, "method": method, "path": path, "body": body, "mfa": mfa,
                              "key": key}
    return world.people[who].request(world.svc.client, world.clock, method, path, body=body, mfa=mfa,
                                     idempotency_key=key, skew_ms=world.client_skew_ms)


def _outcome(reply: Reply) -> str:
    return f"{reply.status} {reply.body.get('error', 'ok')}" if not reply.ok else f"{reply.status}"


def _deposit(world: World, model: Model, a: Action) -> str:
    if a["asset"] == BTC:
        # An outside wallet (the regtest faucet) pays the trader's BIP84 deposit address.
        address = world.svc.btc_runtime.wallets.deposit_address("bitcoin-deposits", a["trader"]).address
        return f"sent {world.btc.faucet_send(address, a['amount'])[:12]}"
    address = world.svc.runtime.wallets.deposit_address("ethereum-deposits", a["trader"]).address
    if a["asset"] == "ETH":
        world.chain.send_eth(address, a["amount"])
    else:
        world.chain.mint(address, a["amount"])
    return "sent"


def remember_head(world: World, model: Model) -> None:
    """Snapshot the chain head once per height, so a reorg can return to any recent block."""
    height = eth_head(world)
    if not model.snapshots or model.snapshots[-1][0] != height:
        model.snapshots.append((height, world.chain.snapshot()))
        del model.snapshots[:-MAX_SNAPSHOTS]


def _mine(world: World, model: Model, a: Action) -> str:
    for _ in range(a["blocks"]):
        remember_head(world, model)
        world.chain.mine(1)
    return f"height {eth_head(world)}"


def _btc_mine(world: World, model: Model, a: Action) -> str:
    mine_btc(world, a["blocks"])
    return f"height {world.btc.height}"


def _btc_reorg(world: World, a: Action) -> str:
    """Disconnect the top ``depth`` Bitcoin blocks and mine a longer branch. With ``drop`` their
    transactions vanish (the other branch double-spent them), else they return to the mempool and the
    new branch mines them again (unless a stall keeps miners off the mempool)."""
    head = world.btc.height
    depth = min(a["depth"], head - BTC_START_HEIGHT)
    if depth < 1:
        return "nothing to reorg"
    world.btc.invalidate(head - depth + 1, drop_transactions=bool(a.get("drop")))
    mine_btc(world, depth + 1)
    dropped = " dropping their transactions" if a.get("drop") else ""
    return f"bitcoin reorged {depth} blocks at {head - depth + 1}{dropped}"


def _reorg(world: World, model: Model, a: Action) -> str:
    if a.get("chain") == "bitcoin":
        return _btc_reorg(world, a)
    head = eth_head(world)
    # The oldest remembered block no deeper than ``depth``: never reorg more than asked.
    target = [s for s in model.snapshots if head - a["depth"] <= s[0] < head]
    if not target:
        return "no snapshot in reach"
    height, snap = target[0]
    world.chain.revert(snap)
    model.snapshots = [s for s in model.snapshots if s[0] < height]
    # The new branch is longer than the old one, as a reorg's winning branch is.
    world.chain.mine(head - height + 1)
    return f"reorged {head - height} blocks at {height}"


def _wallet_tick(world: World, model: Model, a: Action) -> str:
    report, views = world.svc.runtime_for(a.get("chain", "ethereum")).tick()
    bundles = world.svc.cold.tick()
    return f"credited {report.credited} voided {report.voided} txs {len(views)} bundles {len(bundles)}"


def _rebalance(world: World, model: Model, a: Action) -> str:
    """Sweep the hot wallet's surplus above its ceiling to the cold wallet (or propose a refill)."""
    result = world.svc.runtime_for(_chain_of(a["asset"])).treasury.rebalance(a["asset"])
    return "nothing to do" if result is None else type(result).__name__


def _export_bundle(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    data, outcome = cold.export(world.svc.cold, wid)
    if data is not None:
        model.exported.setdefault(wid, []).append(data)
    return outcome


def _sign_bundle(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    exported = model.exported.get(wid)
    if not exported or not world.cosigners:
        return "nothing to sign"
    world.clock.advance(a.get("late_ms", 0))
    signed, outcome = world.cosigners[a.get("cosigner", 0)].sign(exported[-1], world.clock.now_ms)
    if signed is not None:
        model.signed.setdefault(wid, []).append(signed)
    return outcome


def _import_bundle(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    answers = model.signed.get(wid)
    if not answers:
        return "nothing to import"
    return cold.import_signed(world.svc.cold, answers[a.get("which", -1)])


def _consolidate(world: World, model: Model, a: Action) -> str:
    views = world.svc.runtime_for(_chain_of(a["asset"])).treasury.consolidate(a["asset"])
    return f"{len(views)} consolidations"


def _withdraw(world: World, model: Model, a: Action) -> str:
    trader = a["trader"]
    known = model.keys.setdefault(trader, [])
    if all(k != a["key"] for k, _, _ in known):
        known.append((a["key"], a["asset"], a["amount"]))
    body = {"asset": a["asset"], "amount": str(a["amount"]),
            "destination": destination_for(trader, a["asset"])}
    if a.get("source") == "cold":
        body["source_wallet"] = "cold"
    reply = _api(world, model, trader, "POST", "/api/v1/withdrawals", body, mfa=True, key=a["key"])
    state = reply.body.get("withdrawal", {}).get("state", "")
    return f"{_outcome(reply)} {state}".strip()


def _cancel(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    return _outcome(_api(world, model, a["trader"], "POST", f"/api/v1/withdrawals/{wid}/cancel", mfa=True))


def _approve(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    view = world.svc.access.withdrawals.find(wid)
    if view is None or view.state != "pending_approval":
        return "nothing to approve"
    person = world.people[a["approver"]]
    approval = person.approve(withdrawal_subject(view.to_json()), world.clock.now_ms)
    return _outcome(_api(world, model, a["approver"], "POST", f"/api/v1/withdrawals/{wid}/approvals",
                         {"approval": approval}, mfa=True))


def _reject(world: World, model: Model, a: Action) -> str:
    wid = withdrawal_id(a["trader"], a["key"])
    return _outcome(_api(world, model, a["approver"], "POST", f"/api/v1/withdrawals/{wid}/reject",
                         {"reason": "simulated"}, mfa=True))


def _chain_of(asset: str) -> str:
    return "bitcoin" if asset == BTC else "ethereum"


def _dispatch(world: World, model: Model, a: Action) -> str:
    report = world.svc.dispatcher_for(a.get("chain", "ethereum")).run()
    return f"dispatched {len(report.dispatched)} completed {len(report.completed)}"


def _release_due(world: World, model: Model, a: Action) -> str:
    return f"released {len(world.svc.access.withdrawals.release_due())}"


def _collateral(world: World, model: Model, a: Action) -> str:
    return _outcome(_api(world, model, a["trader"], "POST", f"/api/v1/exchange/collateral/{a['direction']}",
                         {"amount": a["amount"]}))


def _place(world: World, model: Model, trader: str, body: dict[str, Any]) -> Reply:
    reply = _api(world, model, trader, "POST", "/api/v1/exchange/orders", body)
    if reply.ok:
        model.orders.setdefault(trader, []).append((body["symbol"], body["id"]))
    return reply


def _order_action(world: World, model: Model, a: Action) -> str:
    fields = ("symbol", "side", "qty", "type", "tif", "price", "reduce_only", "margin_mode")
    body: dict[str, Any] = {k: a[k] for k in fields if k in a}
    body["id"] = model.next_id(f"{a['trader']}-o")
    return _outcome(_place(world, model, a["trader"], body))


def _collude(world: World, model: Model, a: Action) -> str:
    mode = {"margin_mode": a["margin_mode"]} if "margin_mode" in a else {}
    sell = {"symbol": a["symbol"], "side": "sell", "qty": a["qty"], "type": "limit", "price": a["price"],
            "tif": "GTC", "id": model.next_id(f"{a['seller']}-c"), **mode}
    first = _place(world, model, a["seller"], sell)
    buy = {"symbol": a["symbol"], "side": "buy", "qty": a["qty"], "type": "limit", "price": a["price"],
           "tif": "IOC", "id": model.next_id(f"{a['buyer']}-c"), **mode}
    second = _place(world, model, a["buyer"], buy)
    return f"{_outcome(first)} / {_outcome(second)}"


def _make_market(world: World, model: Model, a: Action) -> str:
    """Rest a bid and an ask around the reference, so takers and liquidations find liquidity."""
    outcomes = []
    for side, price in (("buy", a["bid"]), ("sell", a["ask"])):
        body = {"symbol": a["symbol"], "side": side, "qty": a["qty"], "type": "limit", "price": price,
                "tif": "GTC", "id": model.next_id(f"{a['trader']}-m")}
        outcomes.append(_outcome(_place(world, model, a["trader"], body)))
    return " / ".join(outcomes)


def _cancel_orders(world: World, model: Model, a: Action) -> str:
    done = 0
    for symbol, order_id in model.orders.pop(a["trader"], []):
        reply = _api(world, model, a["trader"], "DELETE", f"/api/v1/exchange/orders/{symbol}/{order_id}")
        done += reply.ok
    return f"cancelled {done}"


def _quote_action(world: World, model: Model, a: Action) -> str:
    """Move the outside market (or silence its sources), then let the market job run once."""
    underlying = a["underlying"]
    if a.get("silent"):
        world.market_prices[underlying] = None
        world.svc.feed.silence(underlying)
    else:
        model.prices[underlying] = a["price"]
        world.market_prices[underlying] = a["price"]
        world.svc.feed.set(underlying, a["price"])
    return _market_tick(world, model, a)


def _market_tick(world: World, model: Model, a: Action) -> str:
    """One round of the server's market job: funding and expiries due, index and marks, listings."""
    report = world.svc.market.run_due()
    parts = [f"funding {report.funding}" if report.funding else "",
             f"settled {report.settlements}" if report.settlements else "",
             f"listed {len(report.listed)}" if report.listed else "",
             f"delisted {len(report.delisted)}" if report.delisted else ""]
    return " ".join(p for p in parts if p) or "ok"


def _clock(world: World, model: Model, a: Action) -> str:
    world.clock.advance(a["ms"])
    return f"now {world.clock.now_ms}"


def _expiry_jump(world: World, model: Model, a: Action) -> str:
    """Jump to ``before_ms`` before the next listed expiry (if not past that moment already)."""
    now = world.clock.now_ms
    expiries = [s.expiry_ms for s in world.svc.exchange.venue.specs.values()
                if s.expiry_ms is not None and s.expiry_ms > now]
    if not expiries:
        return "nothing expires"
    target = min(expiries) - a["before_ms"]
    if now >= target:
        return "already there"
    world.clock.advance(target - world.clock.now_ms)
    return f"now {world.clock.now_ms}"


def _checkpoint(world: World, model: Model, a: Action) -> str:
    from custody.audit.codes import AuditError

    try:
        checkpoint = world.svc.audit().create_checkpoint()
    except AuditError as exc:  # e.g. nothing new since the last one: a refusal, not a fault
        return f"refused {exc.code.name.lower()}"
    return f"checkpoint {checkpoint.number} at {checkpoint.tree_size}"


def _audit(world: World, model: Model, a: Action) -> str:
    model.audit_due = True
    return f"auditor {AUDITOR} asks for an export"


def _expire_holds(world: World, model: Model, a: Action) -> str:
    return f"expired {len(world.svc.ledger.expire_pending())}"


def _crash(world: World, model: Model, a: Action) -> str:
    before = world.svc.exchange.venue.state_hash()
    world.restart()
    after = world.svc.exchange.venue.state_hash()
    if before != after:
        raise RecoveryMismatch(f"exchange state hash {before[:16]} before the crash, {after[:16]} after")
    return f"restarted ({world.restarts})"


def _torn_tail(world: World, model: Model, a: Action) -> str:
    before = world.svc.exchange.venue.state_hash()
    world.crash()
    segments = list_segments(world.exchange_dir)
    if segments:
        with open(segments[-1], "ab") as f:
            f.write(bytes.fromhex(a["garbage"]))
    world.restarts += 1
    world.start()
    after = world.svc.exchange.venue.state_hash()
    if before != after:
        raise RecoveryMismatch(f"exchange state hash {before[:16]} before the torn tail, {after[:16]} after")
    return f"torn tail of {len(a['garbage']) // 2} bytes recovered"


def _duplicate(world: World, model: Model, a: Action) -> str:
    last = model.last_request
    if last is None:
        return "nothing to duplicate"
    reply = _api(world, model, last["who"], last["method"], last["path"], last["body"], mfa=last["mfa"],
                 key=last["key"], remember=False)
    return f"duplicate {last['method']} {last['path'][:40]}: {_outcome(reply)}"


def _ledger_outage(world: World, model: Model, a: Action) -> str:
    """The database refuses the exchange's ledger write of one collateral deposit, after the venue
    applied and journaled it: the postings must stay queued and reach the ledger later."""
    ledger = world.svc.exchange.ledger

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("simulated database outage")

    ledger.submit = failing  # type: ignore[method-assign]
    quiet = logging.getLogger("custody.api.errors")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the API logs the 500 with a traceback; expected here
    try:
        reply = _api(world, model, a["trader"], "POST", "/api/v1/exchange/collateral/deposit",
                     {"amount": a["amount"]}, remember=False)
        outcome = f"{_outcome(reply)}"
    except ConnectionError:
        outcome = "ledger write failed after the journal commit"
    finally:
        del ledger.submit  # back to the class method
        quiet.setLevel(level)
    # For the next few steps the invariants do not flush the exchange (nothing else would either
    # until its next command), so custody actions can run while the ledger lags the venue.
    world.exchange_lag_steps = a.get("lag", 0)
    return outcome


def _concurrent_withdraw(world: World, model: Model, a: Action) -> str:
    """The same withdrawal (same id, as one Idempotency-Key gives) requested by several threads at
    once, as a client retrying on a timeout would. Thread scheduling is not seeded: this fault is
    the one source of non-determinism and is off by default (``--faults concurrent``)."""
    from custody.withdrawals.service import WithdrawalInput

    trader = a["trader"]
    known = model.keys.setdefault(trader, [])
    if all(k != a["key"] for k, _, _ in known):
        known.append((a["key"], a["asset"], a["amount"]))
    access = world.svc.access
    user = access.users.get_user(trader)
    request = WithdrawalInput(a["asset"], a["amount"], destination_for(trader, a["asset"]))
    wid = withdrawal_id(trader, a["key"])
    barrier = threading.Barrier(a["copies"])
    outcomes: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            outcomes.append(access.withdrawals.create(user, request, wid).state)
        except Exception as exc:  # the loser's refusal or error is an outcome
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(a["copies"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return " ".join(sorted(outcomes))


def _insider_overdraft(world: World, model: Model, a: Action) -> str:
    """An insider with database access (not the signing key) lifts a user account's overdraft
    protection (dropping the trigger that freezes account terms first) and overdraws it with a
    normal ledger transfer. The platform cannot prevent this; the auditor must catch it."""
    from sqlalchemy import text

    from custody.ledger.entry import AccountKind
    from custody.ledger.posting import TransferRequest

    ledger = world.svc.ledger
    account = ledger.find_account(a["trader"], a["asset"], AccountKind.USER_AVAILABLE)
    if account is None:
        return "no account"
    engine = world.svc.app.extensions["strongroom.engine"]
    with engine.begin() as connection:
        on_table = " ON ledger_accounts" if connection.dialect.name == "postgresql" else ""
        connection.execute(text(f"DROP TRIGGER IF EXISTS ledger_accounts_terms_frozen{on_table}"))
        connection.execute(text("UPDATE ledger_accounts SET flags = 0 WHERE id = :id"), {"id": account.id})
    world.tampered = True
    sink = ledger.ensure_account("insider", a["asset"], AccountKind.USER_AVAILABLE)
    amount = account.balance.credit_balance_available + a["extra"]
    model.audit_due = True
    try:
        result = ledger.transfer(TransferRequest(id=model.next_id("insider-"), debit_account=account.id,
                                                 credit_account=sink.id, amount=amount, reference="insider"))
    except (RuntimeError, AssertionError) as exc:  # the ledger noticed the tampered terms: good
        return f"ledger refused: {str(exc)[:80]}"
    return f"overdrew {a['trader']} by {a['extra']}: {result.status.value}"


class ProcessKilled(BaseException):
    """The simulated process died here (BaseException: no ``except Exception`` may swallow it)."""


def _broadcast_crash(world: World, model: Model, a: Action) -> str:
    """The process dies right after a transaction reached the network, before anything recorded
    that it was sent (during a dispatcher round or a wallet round); then it restarts."""
    chain = a.get("chain", "ethereum")
    adapter = world.svc.runtime_for(chain).adapter
    real = adapter.broadcast

    def broadcast_then_die(raw: bytes) -> str:
        real(raw)
        raise ProcessKilled

    adapter.broadcast = broadcast_then_die  # type: ignore[method-assign]
    try:
        if a.get("round") == "wallet":
            world.svc.runtime_for(chain).tick()
        else:
            world.svc.dispatcher_for(chain).run()
        outcome = "nothing was broadcast"
    except ProcessKilled:
        outcome = "killed after a broadcast"
    finally:
        del adapter.broadcast
    world.restart()
    return f"{outcome}; restarted ({world.restarts})"


class RecoveryMismatch(AssertionError):
    """The exchange recovered to a different state than the one that crashed."""


HANDLERS = {
    "deposit": _deposit, "mine": _mine, "wallet_tick": _wallet_tick, "consolidate": _consolidate,
    "withdraw": _withdraw, "withdraw_retry": _withdraw, "cancel": _cancel, "approve": _approve,
    "reject": _reject, "dispatch": _dispatch, "release_due": _release_due, "collateral": _collateral,
    "order": _order_action, "collude": _collude, "cancel_orders": _cancel_orders, "quote": _quote_action,
    "market_tick": _market_tick, "clock": _clock, "checkpoint": _checkpoint, "audit": _audit,
    "expire_holds": _expire_holds, "crash": _crash, "torn_tail": _torn_tail, "duplicate": _duplicate,
    "clock_jump": _clock, "reorg": _reorg, "deep_reorg": _reorg, "ledger_outage": _ledger_outage,
    "concurrent_withdraw": _concurrent_withdraw, "expiry_jump": _expiry_jump,
    "make_market": _make_market, "rebalance": _rebalance, "export_bundle": _export_bundle,
    "sign_bundle": _sign_bundle, "import_bundle": _import_bundle, "insider_overdraft": _insider_overdraft,
    "broadcast_crash": _broadcast_crash, "btc_mine": _btc_mine,
}

# The network, database and clock faults build on the handlers above; they register themselves here.
from strongroom.simulation import faults  # noqa: E402 - needs HANDLERS defined

HANDLERS.update(faults.HANDLERS)
