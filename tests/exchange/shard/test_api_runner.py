"""The shard runner's retry rules against an in-memory stream (pure: no NATS, no Flask app).

`FakeStream` stores a message id once (the JetStream duplicate window, here
forever) and applies every stored command to one `ShardMachine`, like the
gateway's replica. Hypothesis drives orders, client retries and deposits in
any order: a retried accepted order is answered the same and never placed
twice; a refused one is decided afresh on retry; the stream never holds two
commands under one id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.api.runner import ShardRunner
from exchange.commands import Deposit, Place, SetMark
from exchange.engine.messages import Accepted, NewOrder
from exchange.instruments import DEFAULT_CONFIG, load_instruments
from exchange.stream.shard.gateway import Submitted
from exchange.stream.shard.machine import ShardMachine
from exchange.stream.shard.wire import ShardCommand, ShardResult, encode_command
from exchange.venue import Venue

T = TypeVar("T")
CONFIG = load_instruments(DEFAULT_CONFIG)
BTC = 60_000_000_000
USDC = 1_000_000
NOW = 1_767_225_600_000


@dataclass
class FakeStream:
    """One shard's command stream (ids stored once) and the replica applying it."""

    machine: ShardMachine = field(default_factory=lambda: ShardMachine(CONFIG, "MAIN"))
    ids: dict[str, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    results: list[ShardResult] = field(default_factory=list)
    shard_of: dict[str, str] = field(default_factory=lambda: dict.fromkeys(CONFIG.instruments, "MAIN"))
    default_shard: str = "MAIN"
    replicas: dict[str, Any] = field(default_factory=lambda: {"MAIN": None})

    def submit(self, shard: str, msg_id: str, command: ShardCommand) -> Submitted:
        seq = self.ids.get(msg_id)
        if seq is not None:
            return Submitted(seq, self.results[seq - 1], True, self.bodies[seq - 1])
        body = encode_command(command)
        self.bodies.append(body)
        seq = self.ids[msg_id] = len(self.bodies)
        self.results.append(self.machine.apply(seq, body))
        return Submitted(seq, self.results[-1], False, None)

    def read(self, shard: str, view: Callable[[Venue], T]) -> T:
        return view(self.machine.venue)


def _order(oid: str, qty: int) -> NewOrder:
    return NewOrder(id=f"0123456789abcdef:{oid}", account="alice", side="buy", qty=qty,
                    price=BTC - 1_000_000, ts=NOW * 1_000_000)


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("order"), st.sampled_from(["a", "b", "c"]), st.integers(1, 3)),
    st.tuples(st.just("fund"), st.just(""), st.integers(50, 400)),
), min_size=1, max_size=25)


@settings(max_examples=60)
@given(actions=ACTIONS)
def test_shard_runner_retries_never_place_an_order_twice_and_refusals_are_decided_afresh(
        actions: list[tuple[str, str, int]]) -> None:
    stream = FakeStream()
    run = ShardRunner(stream)
    run.run("BTC-PERP", lambda _: SetMark("BTC-PERP", BTC, BTC), now_ms=NOW)
    qty_of = {"a": 40, "b": 80, "c": 160}  # margins of a few tens to a few hundred USD
    accepted: dict[str, Any] = {}
    for kind, oid, n in actions:
        if kind == "fund":
            run.run(None, lambda _, a=n: Deposit("alice", a * USDC), now_ms=NOW)
            continue
        for _ in range(n):  # the client sends the same order n times (lost responses)
            out = run.run("BTC-PERP", lambda _, o=oid: Place("BTC-PERP", _order(o, qty_of[o])),
                          user="alice", now_ms=NOW)
            if oid in accepted:
                assert (out.code, out.events) == (0, accepted[oid]), "a retry is answered the same"
            elif out.code == 0:
                accepted[oid] = out.events
            else:
                assert out.code in (2001, 2005), out  # only margin (or no collateral yet) refuses
    # The stream holds each id once, and each order was accepted at most once.
    assert len(stream.ids) == len(stream.bodies)
    placed = [e.id for r in stream.results for _, e in r.events if type(e) is Accepted]
    assert sorted(placed) == sorted(set(placed))
    assert {p.rsplit(":", 1)[1] for p in placed} == set(accepted)
    # A refused copy never blocks a later acceptance: funded, every order goes in on retry.
    run.run(None, lambda _: Deposit("alice", 100_000 * USDC), now_ms=NOW)
    for oid, qty in qty_of.items():
        out = run.run("BTC-PERP", lambda _, o=oid, q=qty: Place("BTC-PERP", _order(o, q)),
                      user="alice", now_ms=NOW)
        assert out.code == 0, out
        if oid in accepted:
            assert out.events == accepted[oid]
    live = stream.machine.venue.books["BTC-PERP"].orders
    assert sorted(i.rsplit(":", 1)[1] for i in live) == sorted(qty_of)
