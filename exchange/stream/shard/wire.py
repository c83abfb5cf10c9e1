"""Wire format of clearing shards: shard commands, per-command results, result batches.

A clearing shard is a group of instruments sharing one collateral pool, run
as one whole `Venue` (exchange/venue.py) fed by one durable command stream
(docs/scale-out.md, "Clearing shards"). A command message body is one
`ShardCommand` as JSON: a venue command (exchange/commands.py, tagged by
``op``) or one of the two shard-only collateral commands below, the
appender's wall clock (the shard's clock is the largest ``ts_ms`` applied so
far, never a worker's own clock, so every replica decides identically) and,
for orders and amends, the user whose trading limits apply with those
limits, so the entitlement check runs in stream order and replays the same.

A result batch carries, for a run of consecutive commands, what each one
did: its refusal code (0: applied), the engine events it caused on every
book, the ledger postings it produced (ids from the venue's clearing
sequence, itself a function of the stream) and its clearing events.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from exchange.commands import VenueCommand
from exchange.engine.messages import Event
from exchange.risk.entitlements import TradingLimits
from exchange.stream.topology import SHARD_EVENTS_STREAM as SHARD_EVENTS_STREAM
from exchange.stream.topology import SHARD_SNAPSHOT_BUCKET as SHARD_SNAPSHOT_BUCKET
from exchange.stream.topology import shard_events_subject as shard_events_subject
from exchange.stream.topology import shard_lease_key as shard_lease_key
from exchange.stream.topology import shard_stream as shard_stream
from exchange.stream.topology import shard_subject as shard_subject

DEFAULT_SHARD: Final = "MAIN"
DEPOSIT_REF_PATTERN: Final = re.compile(r"^cdep\.[A-Z0-9][A-Z0-9_-]{0,31}\.[0-9a-f]{32}$")


class _ShardOnly(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=True,
                 omit_defaults=True, gc=False):
    pass


class FundedDeposit(_ShardOnly, frozen=True, tag="funded_deposit"):
    """Credit collateral already reserved in the ledger by the pending transfer ``ref``.

    The gateway places the pending transfer (spot -> collateral) first, so the
    ledger, not the venue, decides whether the spot balance covers it; the
    shard's posting for this command posts that pending transfer.
    """

    account: str
    amount: int
    ref: str


class VoidDeposit(_ShardOnly, frozen=True, tag="void_deposit"):
    """The reconciler's tombstone for a deposit reservation whose command never arrived.

    In stream order: a ``ref`` already applied makes it a no-op; otherwise the
    reservation is voided (a ``void`` posting) and a later FundedDeposit of it
    is refused.
    """

    ref: str


ShardOp = VenueCommand | FundedDeposit | VoidDeposit


class ShardCommand(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                   gc=False):
    """One command of a shard's stream (the message body)."""

    cmd: ShardOp
    ts_ms: int
    user: str | None = None
    limits: TradingLimits | None = None


# (id, kind single|pending|void|post, debit key, credit key, amount, pending id)
WirePosting = tuple[str, str, str, str, int, str | None]


class ShardResult(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What command ``seq`` did. ``code`` 0: applied; otherwise the refusal's code (nothing changed)."""

    seq: int
    code: int
    message: str
    events: list[tuple[str, Event]]  # (symbol, engine event) for every book the command touched
    postings: list[WirePosting]
    risk: list[dict[str, Any]]  # clearing events, RiskEvent.to_dict()


class ShardBatch(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Results of the commands ``first_seq..last_seq`` of one shard, in order.

    ``state_hash``: the venue's state hash after ``last_seq``, on batches that
    end at a snapshot point (a replica compares it with its own).
    """

    shard: str
    first_seq: int
    last_seq: int
    results: list[ShardResult]
    state_hash: str | None = None


command_encoder: Final = msgspec.json.Encoder()
command_decoder: Final = msgspec.json.Decoder(ShardCommand)
batch_encoder: Final = msgspec.json.Encoder()
batch_decoder: Final = msgspec.json.Decoder(ShardBatch)


def encode_command(command: ShardCommand) -> bytes:
    """Return the message body of ``command``."""
    return command_encoder.encode(command)


def batch_msg_id(batch: ShardBatch) -> str:
    """Return the Nats-Msg-Id of a result batch (shard and command range)."""
    return f"{batch.shard}:{batch.first_seq}-{batch.last_seq}"


def msg_id_of(cmd: ShardOp, nonce: str) -> str:
    """Return the Nats-Msg-Id a command is appended under, so a retried append is stored once.

    Orders: the engine order id (the client's idempotency id, scoped per user);
    cancels: ``cx.<order id>``; collateral commands: their reference; anything
    else: ``r.<nonce>`` (the signed request's nonce, or a fresh random id).
    """
    from exchange.commands import CancelOrder, Place

    if type(cmd) is Place:
        return cmd.order.id
    if type(cmd) is CancelOrder:
        return f"cx.{cmd.id}"
    if type(cmd) is FundedDeposit:
        return cmd.ref
    if type(cmd) is VoidDeposit:
        return f"void.{cmd.ref}"
    return f"r.{nonce}"
