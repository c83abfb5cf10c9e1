"""Run, replay and shrink simulations; read and write replayable JSON scenarios.

``simulate(seed, steps)`` builds a fresh platform, lets the seeded scheduler
pick ``steps`` actions, checks the invariants after each one and stops at the
first violation. The actions actually taken are the trace; ``replay(trace)``
runs a trace again on a fresh platform, and ``shrink`` drops chunks of it
(delta debugging) while the same invariant still breaks, so a failure is
reported with the shortest trace found within the budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.wallets.wallet import Temperature
from strongroom.simulation import actors
from strongroom.simulation.actors import Action, Model, RecoveryMismatch
from strongroom.simulation.invariants import (
    AT_AUDIT,
    AT_END,
    EVERY_STEP,
    TRADING_OPS,
    Violation,
    check,
    equities,
    fill_violations,
)
from strongroom.simulation.world import (
    ASSETS,
    BTC,
    BTC_CONFIRMATIONS,
    CONFIRMATIONS,
    SQLITE,
    World,
    build_world,
    eth_head,
    heal,
    mine_btc,
)

SCENARIO_FORMAT = "strongroom.simulation.scenario.v1"
DEFAULT_TRADERS = 4
DEFAULT_AUDIT_EVERY = 50
PLATFORM_ETH_WEI = 100 * 10**18  # the platform's own ETH in the hot wallet: it pays the gas
PLATFORM_USDC_MINOR = 50_000 * 10**6  # the platform's own USDC: it capitalises the insurance fund
PLATFORM_BTC_SAT = 10**8  # the platform's own BTC: it pays the fees of sweeps and consolidations
PLATFORM_BTC_OWNER = "platform-treasury"
MAX_SHRINK_RUNS = 40
TRACE_TAIL = 25


@dataclass
class Failure:
    """The first violation of a run: where, what, and the actions that led there."""

    step: int
    violations: list[Violation]
    action: Action | None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "action": self.action,
                "violations": [v.to_dict() for v in self.violations]}


@dataclass
class RunResult:
    """What one run did: the trace (action + outcome per step) and the failure, if any."""

    seed: int
    steps: int
    faults: tuple[str, ...]
    traders: int
    database: str = SQLITE
    trace: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None
    seconds: float = 0.0
    restarts: int = 0
    events: dict[str, int] = field(default_factory=dict)  # what happened on the exchange, by kind
    state_hash: str = ""  # the platform's money state after the run (see :func:`state_hash`)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def actions(self) -> list[Action]:
        return [entry["action"] for entry in self.trace]

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready report line."""
        ops: dict[str, int] = {}
        for action in self.actions:
            ops[action["op"]] = ops.get(action["op"], 0) + 1
        body: dict[str, Any] = {
            "seed": self.seed, "database": self.database, "steps_run": len(self.trace), "steps": self.steps,
            "faults": list(self.faults),
            "traders": self.traders, "ok": self.ok, "seconds": round(self.seconds, 2),
            "steps_per_s": round(len(self.trace) / self.seconds, 1) if self.seconds else None,
            "restarts": self.restarts, "state_hash": self.state_hash, "ops": dict(sorted(ops.items())),
            "exchange_events": self.events,
        }
        if self.failure is not None:
            body["failure"] = self.failure.to_dict()
            body["trace_tail"] = self.trace[-TRACE_TAIL:]
        return body


def fund_platform(world: World) -> None:
    """Give the hot wallet the platform's own ETH (gas) and USDC (insurance fund), on chain and in
    the ledger, and capitalise the exchange's insurance fund with that USDC."""
    runtime = world.svc.runtime
    hot = runtime.wallets.one("ethereum", Temperature.HOT)
    address = runtime.wallets.primary_address(hot.id).address
    world.chain.send_eth(address, PLATFORM_ETH_WEI)
    world.chain.mint(address, PLATFORM_USDC_MINOR)
    world.chain.mine(1)
    ledger = world.svc.ledger
    for asset, amount in (("ETH", PLATFORM_ETH_WEI), ("USDC", PLATFORM_USDC_MINOR)):
        equity = ledger.ensure_account("platform-equity", asset, AccountKind.EXTERNAL)
        ledger.transfer(TransferRequest(id=f"sim-platform-equity-{asset}",
                                        debit_account=runtime.wallets.wallet_account(hot, asset),
                                        credit_account=equity.id, amount=amount,
                                        reference="platform's own funds"))
    # The exchange seeds its fund from its own wallet account (exchange.risk.clearing.WALLET); the
    # USDC behind it is the platform's, booked above against the custody hot wallet.
    with world.svc.exchange.command() as venue:
        venue.seed_insurance(PLATFORM_USDC_MINOR)


def bootstrap(world: World) -> None:
    """Open the market: every trader deposits ETH and USDC on chain, they confirm, part of the USDC
    becomes exchange collateral, and every price source quotes, so the first steps can trade."""
    model = Model()
    for trader in world.traders:
        actors.apply(world, model, {"op": "deposit", "trader": trader, "asset": "ETH",
                                    "amount": 5 * actors.ETH})
        actors.apply(world, model, {"op": "deposit", "trader": trader, "asset": "USDC",
                                    "amount": 50_000 * actors.USDC})
        actors.apply(world, model, {"op": "deposit", "trader": trader, "asset": BTC,
                                    "amount": actors.SAT_PER_BTC})
    actors.apply(world, model, {"op": "deposit", "trader": PLATFORM_BTC_OWNER, "asset": BTC,
                                "amount": PLATFORM_BTC_SAT})
    for _ in range(max(CONFIRMATIONS, BTC_CONFIRMATIONS) + 2):
        world.chain.mine(1)
        world.svc.runtime.tick()
        mine_btc(world, 1)
        world.svc.btc_runtime.tick()
    # The platform's own BTC pays the network fees of sweeps and consolidations (as its ETH pays gas):
    # it arrives as a deposit of its own and is booked to platform equity, not owed to anyone.
    ledger = world.svc.ledger
    own = ledger.find_account(PLATFORM_BTC_OWNER, BTC, AccountKind.USER_AVAILABLE)
    assert own is not None and own.balance.credit_balance_available == PLATFORM_BTC_SAT, "BTC not credited"
    equity = ledger.ensure_account("platform-equity", BTC, AccountKind.EXTERNAL)
    ledger.transfer(TransferRequest(id="sim-platform-equity-BTC", debit_account=own.id,
                                    credit_account=equity.id, amount=PLATFORM_BTC_SAT,
                                    reference="platform's own funds"))
    # Bitcoin's hot wallet starts with the traders' deposits, consolidated (withdrawals pay from it).
    world.svc.btc_runtime.treasury.consolidate(BTC)
    for _ in range(BTC_CONFIRMATIONS + 2):
        mine_btc(world, 1)
        world.svc.btc_runtime.tick()
    world.svc.btc_runtime.treasury.set_limits(BTC, actors.SAT_PER_BTC, 2 * actors.SAT_PER_BTC,
                                              3 * actors.SAT_PER_BTC)
    # The hot wallet keeps 20-60 ETH and 50k-150k USDC; ``rebalance`` sweeps the rest to cold.
    treasury = world.svc.runtime.treasury
    treasury.set_limits("ETH", 20 * actors.ETH, 40 * actors.ETH, 60 * actors.ETH)
    treasury.set_limits("USDC", 50_000 * actors.USDC, 100_000 * actors.USDC, 150_000 * actors.USDC)
    for underlying, price in actors.PRICE_START.items():
        actors.apply(world, model, {"op": "quote", "underlying": underlying, "price": price})
    for trader in world.traders:
        outcome = actors.apply(world, model, {"op": "collateral", "trader": trader, "direction": "deposit",
                                              "amount": 20_000 * actors.USDC})
        assert outcome == "200", f"bootstrap collateral deposit for {trader}: {outcome}"


def _setup(seed: int, traders: int, workdir: Path | None, database: str) -> World:
    world = build_world(seed, traders, workdir, database)
    fund_platform(world)
    bootstrap(world)
    world.svc.audit().create_checkpoint()
    world.pinned_keys = {(k.name, k.version): k for k in world.svc.audit().public_keys()}
    # The app's INFO logging of every recovery and reconciliation would drown the report.
    logging.getLogger().setLevel(logging.WARNING)
    return world


def _step(world: World, model: Model, action: Action, audit_every: int,
          index: int) -> tuple[str, list[Violation]]:
    before = equities(world) if action["op"] in TRADING_OPS else None
    try:
        outcome = actors.apply(world, model, action)
    except RecoveryMismatch as exc:
        return "recovery mismatch", [Violation("exchange_recovery_state_hash", str(exc))]
    except Exception as exc:  # an unexpected exception out of the platform is a finding
        message = f"{action['op']} raised {type(exc).__name__}: {exc}"
        return "raised", [Violation("no_unexpected_exception", message)]
    found = [] if before is None else fill_violations(world, action, before)
    checks = EVERY_STEP
    if model.audit_due or (audit_every and (index + 1) % audit_every == 0):
        checks = EVERY_STEP + AT_AUDIT
        model.audit_due = False
    return outcome, found + check(world, checks)


def run(seed: int, steps: int, faults: Sequence[str] = actors.DEFAULT_FAULTS, *,
        traders: int = DEFAULT_TRADERS, audit_every: int = DEFAULT_AUDIT_EVERY,
        actions: Sequence[Action] | None = None, workdir: Path | None = None,
        database: str = SQLITE, inspect: Callable[[World], None] | None = None) -> RunResult:
    """Run ``steps`` scheduled actions for ``seed`` (or replay ``actions``); stop at the first violation.

    ``database`` is ``"sqlite"`` or a PostgreSQL server URL (a scratch database per run);
    ``inspect`` (for tests) reads the platform after the last step, before it is torn down."""
    started = time.perf_counter()
    result = RunResult(seed, steps if actions is None else len(actions), tuple(faults), traders,
                       _kind(database))
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    world = _setup(seed, traders, workdir, database)
    model = Model()
    enabled = frozenset(faults)
    try:
        total = result.steps
        for index in range(total):
            action = actions[index] if actions is not None else actors.choose(rng, world, model, enabled)
            outcome, violations = _step(world, model, action, audit_every, index)
            result.trace.append({"step": index, "action": action, "outcome": outcome})
            if violations:
                result.failure = Failure(index, violations, action)
                break
        else:
            quiesce(world)
            final = check(world, EVERY_STEP + AT_AUDIT + AT_END)
            if final:
                result.failure = Failure(total, final, None)
        result.restarts = world.restarts
        result.events = exchange_events(world)
        result.state_hash = state_hash(world)
        if inspect is not None:
            inspect(world)
    finally:
        world.close()
        result.seconds = time.perf_counter() - started
    return result


QUIESCE_ROUNDS = 2 * max(CONFIRMATIONS, BTC_CONFIRMATIONS) + 2


def quiesce(world: World) -> None:
    """Let time pass without new requests: mine, run the wallet round and the dispatcher, release
    delayed withdrawals, until everything in flight had its chance to finish."""
    heal(world)
    svc = world.svc
    for _ in range(QUIESCE_ROUNDS):
        world.clock.advance(60_000)
        world.chain.mine(1)
        mine_btc(world, 1)
        svc.runtime.tick()
        svc.btc_runtime.tick()
        for asset in ASSETS:
            svc.runtime.treasury.consolidate(asset)
        svc.btc_runtime.treasury.consolidate(BTC)
        svc.dispatcher.run()
        svc.btc_dispatcher.run()
        svc.cold.tick()
    svc.runtime.tick()
    svc.btc_runtime.tick()
    svc.cold.tick()
    svc.dispatcher.run()
    svc.btc_dispatcher.run()


def state_hash(world: World) -> str:
    """Return a digest of the platform's money state: every ledger account's balances (by owner, asset
    and kind, not by generated id), every withdrawal's asset, amount and state, every outgoing chain
    transaction's purpose, asset, amount and status, both chains' heights and the exchange's state hash.
    Key material (and so addresses and txids) differs between runs; none of it is in here."""
    from sqlalchemy import select

    from custody.wallets.models import ChainTransaction
    from custody.withdrawals.models import WithdrawalRequest

    parts: list[object] = []
    for a in sorted(world.svc.ledger.list_accounts(), key=lambda a: (a.owner, a.asset, str(a.kind))):
        b = a.balance
        parts.append((a.owner, a.asset, str(a.kind), b.debits_posted, b.credits_posted, b.debits_pending,
                      b.credits_pending))
    with world.svc.app.extensions["strongroom.sessions"]() as session:
        parts += sorted((w.id, w.asset, w.amount, w.state)
                        for w in session.scalars(select(WithdrawalRequest)))
        parts += sorted((t.chain, t.purpose, t.asset, t.amount_minor, t.status)
                        for t in session.scalars(select(ChainTransaction)))
    parts += [("heights", eth_head(world), world.btc.height),
              ("venue", world.svc.exchange.venue.state_hash())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def exchange_events(world: World) -> dict[str, int]:
    """Count the exchange's risk events and fills of the current process (since its last start)."""
    svc = world.svc.exchange
    counts: dict[str, int] = {}
    for event in svc.events:
        name = type(event).__name__
        counts[name] = counts.get(name, 0) + 1
    counts["fills"] = sum(len(f) for f in svc.venue.fills.values())
    return dict(sorted(counts.items()))


def _kind(database: str) -> str:
    """Name the database kind for reports (never the server URL: it may carry a password)."""
    return SQLITE if database == SQLITE else "postgresql"


def replay(scenario: dict[str, Any], workdir: Path | None = None, database: str = SQLITE) -> RunResult:
    """Replay a scenario (see :func:`scenario_of`) on a fresh platform."""
    if scenario.get("format") != SCENARIO_FORMAT:
        raise ValueError(f"format was {scenario.get('format')!r}, expected {SCENARIO_FORMAT}")
    return run(int(scenario["seed"]), len(scenario["actions"]), tuple(scenario.get("faults", ())),
               traders=int(scenario.get("traders", DEFAULT_TRADERS)),
               audit_every=int(scenario.get("audit_every", DEFAULT_AUDIT_EVERY)),
               actions=scenario["actions"], workdir=workdir, database=database)


def _fails_same(result: RunResult, invariant: str) -> bool:
    return result.failure is not None and any(v.name == invariant for v in result.failure.violations)


def shrink(result: RunResult, *, max_runs: int = MAX_SHRINK_RUNS,
           audit_every: int = DEFAULT_AUDIT_EVERY, database: str = SQLITE) -> RunResult:
    """Drop chunks of a failing trace while the same invariant still breaks; return the smallest run."""
    assert result.failure is not None, "only a failing run can be shrunk"
    invariant = result.failure.violations[0].name
    best = result
    actions = best.actions
    runs = 0
    chunk = max(1, len(actions) // 2)
    while chunk >= 1 and runs < max_runs:
        start = 0
        progressed = False
        while start < len(actions) and runs < max_runs:
            candidate = actions[:start] + actions[start + chunk:]
            if not candidate:
                start += chunk
                continue
            attempt = run(result.seed, len(candidate), result.faults, traders=result.traders,
                          audit_every=audit_every, actions=candidate, database=database)
            runs += 1
            if _fails_same(attempt, invariant):
                best, progressed = attempt, True
                actions = attempt.actions  # the run stops at the failure: later actions drop too
            else:
                start += chunk
        if not progressed:
            chunk //= 2
    return best


def scenario_of(result: RunResult, audit_every: int = DEFAULT_AUDIT_EVERY) -> dict[str, Any]:
    """Return the replayable JSON scenario of a run (docs/simulation.md)."""
    body: dict[str, Any] = {
        "format": SCENARIO_FORMAT, "seed": result.seed, "traders": result.traders,
        "faults": list(result.faults), "audit_every": audit_every, "actions": result.actions,
    }
    if result.failure is not None:
        body["expect"] = {"invariant": result.failure.violations[0].name, "step": result.failure.step}
    return body


def write_scenario(path: Path, scenario: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scenario, indent=1, sort_keys=True) + "\n")


def read_scenario(path: Path) -> dict[str, Any]:
    body = json.loads(path.read_text())
    if not isinstance(body, dict):
        raise ValueError(f"{path}: a scenario is a JSON object")
    return body
