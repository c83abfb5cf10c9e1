"""Faults of the database, the network, the chain and the clocks, injected by the same seed.

Each fault is an action like any other (a JSON-ready dict built from the seed, carried out by
a handler), so a failing trace replays and shrinks the same way:

- ``db_fault``: one commit of a money-path action fails (the database refuses it, or the
  connection drops after the commit so the caller never hears it succeeded), then the process
  goes on or restarts.
- ``clock_skew``: the clients' clocks and the jobs process's clock drift from the API's
  (the jobs clock may step backwards, as an NTP correction does).
- ``reorder``: a trader's requests, signed in one order, arrive in another; one arrives twice.
- ``race`` (with ``--faults concurrent``): two or three requests on the same withdrawal, order
  or collateral arrive at once, on threads (the one non-deterministic fault).
- ``stuck_tx``: the network swallows broadcasts for a few blocks, then delivers them (possibly
  after their replacements, in reverse order) or loses them.
- ``fee_spike``: the node quotes fees 10 to 10,000 times the real ones for a few blocks.

Handlers import :mod:`strongroom.simulation.actors` when called: that module registers these.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from strongroom.simulation.client import TOTP_STEP_MS, Prepared, send
from strongroom.simulation.world import TREASURY, World, eth_head

Action = dict[str, Any]

# Money-path actions a failed commit may hit (each touches the database).
DB_TARGETS = ("withdraw", "withdraw_retry", "approve", "cancel", "reject", "dispatch", "wallet_tick",
              "collateral", "order", "collude", "release_due", "expire_holds", "rebalance", "consolidate",
              "export_bundle", "import_bundle", "checkpoint")
MAX_FAILED_COMMIT = 6  # the failed commit is the 1st..6th of the action
CLIENT_SKEWS_MS = (0, 0, 0, -2_000, 2_000, 4_500, -4_500, 6_000, -60_000)  # the receive window is 5 s
JOBS_SKEWS_MS = (0, 0, -1_000, 1_000, -60_000, 60_000, -600_000, 600_000, 3_600_000, -3_600_000)
FEE_MULTIPLIERS = (10, 100, 10_000)
RACE_THREAD_TIMEOUT_S = 60  # bounds a hang only


class SimulatedDisconnect(Exception):
    """The database connection went away (what the driver raises, wrapped by SQLAlchemy)."""


class CommitFault:
    """Make the ``nth`` commit on ``engines`` fail: before it reaches the database (``fail``), or
    after it did, so the caller sees an error for a commit that happened (``lost_ack``)."""

    def __init__(self, engines: list[Engine], nth: int, mode: str) -> None:
        assert mode in ("fail", "lost_ack"), f"mode was {mode!r}"
        self.engines, self.nth, self.mode = engines, nth, mode
        self.commits = 0
        self.struck = False
        self._lose_ack = False

    def _error(self) -> OperationalError:
        return OperationalError("COMMIT", None,
                                SimulatedDisconnect("server closed the connection unexpectedly"))

    def _on_commit(self, connection: Any) -> None:
        self.commits += 1
        if self.commits != self.nth:
            return
        self.struck = True
        if self.mode == "fail":
            raise self._error()
        self._lose_ack = True

    def _after_commit(self, session: Session) -> None:
        if self._lose_ack:
            self._lose_ack = False
            raise self._error()

    @contextmanager
    def armed(self) -> Iterator[CommitFault]:
        for engine in self.engines:
            event.listen(engine, "commit", self._on_commit)
        event.listen(Session, "after_commit", self._after_commit)
        try:
            yield self
        finally:
            event.remove(Session, "after_commit", self._after_commit)
            for engine in self.engines:
                event.remove(engine, "commit", self._on_commit)


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Silence loggers that report an injected failure with a traceback (expected here)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ------------------------------------------------------------------------------------ builders


def _build_db_fault(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    from strongroom.simulation import actors

    target = actors.build(rng.choice(DB_TARGETS), rng, world, model)
    return {"op": "db_fault", "target": target, "nth": rng.randint(1, MAX_FAILED_COMMIT),
            "mode": rng.choice(("fail", "lost_ack")), "restart": rng.random() < 0.3}


def _build_clock_skew(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    return {"op": "clock_skew", "client_ms": rng.choice(CLIENT_SKEWS_MS),
            "jobs_ms": rng.choice(JOBS_SKEWS_MS)}


def _build_reorder(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    from strongroom.simulation import actors

    order = actors._order(rng, world, trader)
    order.pop("op")
    order.pop("trader")
    order["type"], order["tif"] = "limit", "GTC"
    order.setdefault("price", actors._band_price(world, order["symbol"], rng.randint(-5_000, 5_000)))
    delivery = [0, 1, 2]
    rng.shuffle(delivery)
    return {"op": "reorder", "trader": trader, "order": order, "delivery": delivery,
            "collateral": max(1, actors._margin(world, trader) // rng.choice((1, 2, 5))),
            "replay": rng.choice((None, 0, 1, 2))}


def _build_race(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    from strongroom.simulation import actors

    known = [(t, k) for t in world.traders for k in model.keys.get(t, [])]
    kinds = ("withdrawal", "withdrawal", "order", "collateral") if known else ("order", "collateral")
    kind = rng.choice(kinds)
    if kind == "withdrawal":
        owner, (key, asset, amount) = rng.choice(known)
        moves = rng.sample(("approve", "approve", "cancel", "retry", "reject"), rng.randint(2, 3))
        return {"op": "race", "kind": kind, "trader": owner, "key": key, "asset": asset, "amount": amount,
                "moves": moves, "approvers": rng.sample(TREASURY, 3)}
    if kind == "order":
        order = actors._order(rng, world, trader)
        order.pop("op")
        order.pop("trader")
        return {"op": "race", "kind": kind, "trader": trader, "order": order,
                "moves": rng.choice((["place", "place"], ["place", "cancel"], ["place", "place", "cancel"]))}
    return {"op": "race", "kind": kind, "trader": trader, "copies": rng.randint(2, 3),
            "amount": max(1, actors._margin(world, trader) // rng.choice((1, 2)))}


def _build_stuck_tx(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    if rng.random() < 0.4:
        # Bitcoin: miners leave the mempool alone for a few blocks (the executor bumps the fee by RBF).
        return {"op": "stuck_tx", "chain": "bitcoin", "blocks": rng.randint(2, 8)}
    return {"op": "stuck_tx", "blocks": rng.randint(2, 8), "drop": rng.random() < 0.3,
            "reverse": rng.random() < 0.5}


def _build_fee_spike(rng: random.Random, world: World, model: Any, trader: str) -> Action:
    spike = {"op": "fee_spike", "multiplier": rng.choice(FEE_MULTIPLIERS), "blocks": rng.randint(1, 6)}
    if rng.random() < 0.4:
        spike["chain"] = "bitcoin"  # the node's fee estimate: executors must clamp to their cap
    return spike


BUILDERS: dict[str, Callable[[random.Random, World, Any, str], Action]] = {
    "db_fault": _build_db_fault, "clock_skew": _build_clock_skew, "reorder": _build_reorder,
    "race": _build_race, "stuck_tx": _build_stuck_tx, "fee_spike": _build_fee_spike,
}


# ------------------------------------------------------------------------------------ handlers


def _db_fault(world: World, model: Any, a: Action) -> str:
    """Run the target action with its ``nth`` commit failing; then go on, or restart the process."""
    from strongroom.simulation import actors

    target = a["target"]
    svc = world.svc
    fault = CommitFault([svc.app.extensions["strongroom.engine"], svc.runtime_engine], a["nth"], a["mode"])
    with quiet("custody.api.errors", "custody", "strongroom", "exchange"), fault.armed():
        try:
            outcome = actors.HANDLERS[target["op"]](world, model, target)
        except Exception as exc:
            if not fault.struck:
                raise  # an exception the fault did not cause is a finding (no_unexpected_exception)
            # A job's loop (or the WSGI server) catches it, logs it and goes on: so does the simulation.
            outcome = f"raised {type(exc).__name__}"
    head = f"{target['op']}: commit {a['nth']} {a['mode']}" if fault.struck else \
        f"{target['op']}: only {fault.commits} commits"
    if a.get("restart"):
        return f"{head}: {outcome}; {actors._crash(world, model, a)}"
    return f"{head}: {outcome}"


def _clock_skew(world: World, model: Any, a: Action) -> str:
    world.client_skew_ms = a["client_ms"]
    world.jobs_skew_ms = a["jobs_ms"]
    return f"clients {a['client_ms']:+d} ms, jobs {a['jobs_ms']:+d} ms"


def _exchange_requests(world: World, model: Any, trader: str, order: dict[str, Any], amount: int,
                       tag: str) -> tuple[str, list[tuple[str, str, dict[str, Any] | None]]]:
    order_id = model.next_id(f"{trader}-{tag}")
    body = {**order, "id": order_id}
    return order_id, [("POST", "/api/v1/exchange/orders", body),
                      ("DELETE", f"/api/v1/exchange/orders/{order['symbol']}/{order_id}", None),
                      ("POST", "/api/v1/exchange/collateral/withdraw", {"amount": amount})]


def _reorder(world: World, model: Any, a: Action) -> str:
    """Sign a place, a cancel of it and a collateral withdrawal in that order; deliver them in
    ``delivery`` order, then one of them again, byte for byte (a network duplicate)."""
    from strongroom.simulation import actors

    trader = a["trader"]
    person = world.people[trader]
    order_id, requests = _exchange_requests(world, model, trader, a["order"], a["collateral"], "r")
    prepared = [person.prepare(world.clock, method, path, body=body, skew_ms=world.client_skew_ms)
                for method, path, body in requests]
    outcomes = []
    for index in a["delivery"]:
        reply = send(world.svc.client, prepared[index])
        if index == 0 and reply.ok:
            model.orders.setdefault(trader, []).append((a["order"]["symbol"], order_id))
        outcomes.append(f"{index}:{actors._outcome(reply)}")
    if a.get("replay") is not None:
        again = send(world.svc.client, prepared[a["replay"]])
        outcomes.append(f"again {a['replay']}:{actors._outcome(again)}")
    return " ".join(outcomes)


def _deliver_at_once(world: World, prepared: list[Prepared]) -> list[str]:
    """Send every request on its own thread, all released together; return their outcomes, sorted."""
    from strongroom.simulation import actors

    barrier = threading.Barrier(len(prepared))
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(request: Prepared) -> None:
        client = world.svc.app.test_client()
        barrier.wait()
        try:
            found = actors._outcome(send(client, request))
        except Exception as exc:  # a request's own failure is its outcome; the invariants judge
            found = f"raised {type(exc).__name__}"
        with lock:
            outcomes.append(found)

    threads = [threading.Thread(target=one, args=(p,)) for p in prepared]
    with quiet("custody.api.errors"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(RACE_THREAD_TIMEOUT_S)
    return sorted(outcomes)


def _race(world: World, model: Any, a: Action) -> str:
    """Requests on one withdrawal, order or collateral balance, released at the same instant."""
    from strongroom.simulation import actors
    from strongroom.simulation.client import withdrawal_subject
    from strongroom.simulation.world import destination_for

    trader = a["trader"]
    # Everyone signs within one TOTP step and one receive window, as simultaneous clients would.
    world.clock.advance(TOTP_STEP_MS)
    prepared: list[Prepared] = []
    skew = world.client_skew_ms
    if a["kind"] == "withdrawal":
        wid = actors.withdrawal_id(trader, a["key"])
        view = world.svc.access.withdrawals.find(wid)
        approvers = list(a["approvers"])
        for move in a["moves"]:
            if move == "approve":
                if view is None or view.state != "pending_approval":
                    continue
                who = approvers.pop()
                approval = world.people[who].approve(withdrawal_subject(view.to_json()), world.clock.now_ms)
                prepared.append(world.people[who].prepare(
                    world.clock, "POST", f"/api/v1/withdrawals/{wid}/approvals", body={"approval": approval},
                    mfa=True, skew_ms=skew, same_totp_step=True))
            elif move == "reject":
                prepared.append(world.people[approvers.pop()].prepare(
                    world.clock, "POST", f"/api/v1/withdrawals/{wid}/reject", body={"reason": "race"},
                    mfa=True, skew_ms=skew, same_totp_step=True))
            elif move == "cancel":
                prepared.append(world.people[trader].prepare(
                    world.clock, "POST", f"/api/v1/withdrawals/{wid}/cancel", mfa=True, skew_ms=skew,
                    same_totp_step=True))
            else:
                body = {"asset": a["asset"], "amount": str(a["amount"]),
                        "destination": destination_for(trader, a["asset"])}
                prepared.append(world.people[trader].prepare(
                    world.clock, "POST", "/api/v1/withdrawals", body=body, mfa=True, idempotency_key=a["key"],
                    skew_ms=skew, same_totp_step=True))
    elif a["kind"] == "order":
        order_id, requests = _exchange_requests(world, model, trader, a["order"], 0, "x")
        chosen = [requests[0] if move == "place" else requests[1] for move in a["moves"]]
        prepared = [world.people[trader].prepare(world.clock, m, p, body=b, skew_ms=skew)
                    for m, p, b in chosen]
        model.orders.setdefault(trader, []).append((a["order"]["symbol"], order_id))
    else:
        prepared = [world.people[trader].prepare(world.clock, "POST", "/api/v1/exchange/collateral/withdraw",
                                                 body={"amount": a["amount"]}, skew_ms=skew)
                    for _ in range(a["copies"])]
    if len(prepared) < 2:
        return "nothing to race"
    return f"{a['kind']} x{len(prepared)}: " + " | ".join(_deliver_at_once(world, prepared))


def _stuck_tx(world: World, model: Any, a: Action) -> str:
    if a.get("chain") == "bitcoin":
        world.btc_stall_until_height = max(world.btc_stall_until_height, world.btc.height + a["blocks"])
        return f"bitcoin miners skip the mempool until height {world.btc_stall_until_height}"
    head = eth_head(world)
    world.stall_until_height = max(world.stall_until_height, head + a["blocks"])
    world.stall_drop = bool(a["drop"])
    world.stall_reverse = bool(a["reverse"])
    return f"broadcasts {'lost' if a['drop'] else 'held'} until height {world.stall_until_height}"


def _fee_spike(world: World, model: Any, a: Action) -> str:
    if a.get("chain") == "bitcoin":
        from strongroom.simulation.world import BTC_FEE_RATE_SAT_VB

        world.btc.fee_rate_sat_vb = BTC_FEE_RATE_SAT_VB * a["multiplier"]
        world.btc_fee_spike_until_height = world.btc.height + a["blocks"]
        return f"bitcoin fee estimate x{a['multiplier']} until height {world.btc_fee_spike_until_height}"
    head = eth_head(world)
    world.fee_multiplier = a["multiplier"]
    world.fee_spike_until_height = head + a["blocks"]
    return f"fees x{a['multiplier']} until height {world.fee_spike_until_height}"


HANDLERS: dict[str, Callable[[World, Any, Action], str]] = {
    "db_fault": _db_fault, "clock_skew": _clock_skew, "reorder": _reorder, "race": _race,
    "stuck_tx": _stuck_tx, "fee_spike": _fee_spike,
}
