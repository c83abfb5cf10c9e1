"""The API side of the scale-out mode: validate a command and append it to its market's stream.

The command id is sent as Nats-Msg-Id, so a client retry (same id) inside the
duplicate window is stored once and answered with the sequence of the first
copy. The stream sequence the server assigns is the engine's replay order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from custody.ledger.entry import ACCOUNT_OWNER_PATTERN
from exchange.engine.messages import Command, Malformed
from exchange.stream.controls import Control, encode_control
from exchange.stream.topology import MAX_MSG_BYTES, command_stream, command_subject

COMMAND_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,119}$")
PUBLISH_TIMEOUT_S = 5.0
_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_encoder = msgspec.json.Encoder()


class StreamCode(IntEnum):
    """Why the command gateway refused a command (3100-3199, after the engine's 30xx codes)."""

    BAD_COMMAND = 3101
    BAD_COMMAND_ID = 3102
    UNKNOWN_MARKET = 3103
    STREAM_UNAVAILABLE = 3104
    NOT_ROUTED = 3105  # an API state change scale-out mode does not send to the engines


class StreamRefused(Exception):
    """A command was not appended; nothing was stored."""

    def __init__(self, code: StreamCode, message: str) -> None:
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Appended:
    """Where a command was stored; `duplicate` when an earlier copy with the same id was."""

    seq: int
    duplicate: bool


def validate_command(raw: bytes | Command) -> Command:
    """Decode and check a command at the edge; raise StreamRefused(BAD_COMMAND) if unusable."""
    if isinstance(raw, bytes | bytearray):
        try:
            cmd = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise StreamRefused(StreamCode.BAD_COMMAND, str(exc)) from None
    else:
        cmd = raw
    if isinstance(cmd, Malformed):
        raise StreamRefused(StreamCode.BAD_COMMAND, "malformed commands are not accepted")
    account = getattr(cmd, "account", None)
    if account is not None and (not isinstance(account, str)
                                or not ACCOUNT_OWNER_PATTERN.fullmatch(account)):
        raise StreamRefused(StreamCode.BAD_COMMAND,
                            f"account was {str(account)[:40]!r}, must match "
                            f"{ACCOUNT_OWNER_PATTERN.pattern}")
    return cmd


class CommandPublisher:
    """Append validated commands to the per-market command streams."""

    def __init__(self, js: JetStreamContext, markets: set[str]) -> None:
        self._js = js
        self._markets = frozenset(markets)

    async def append(self, market: str, command_id: str, raw: bytes | Command) -> Appended:
        """Validate `raw` and append it to `market`'s stream under `command_id`."""
        if market not in self._markets:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"market was {market[:40]!r}, not listed")
        if not COMMAND_ID_PATTERN.fullmatch(command_id):
            raise StreamRefused(StreamCode.BAD_COMMAND_ID,
                                f"command id was {command_id[:40]!r}, must be 1-120 characters "
                                "of [A-Za-z0-9._:-]")
        return await self.append_body(market, command_id, _encoder.encode(validate_command(raw)))

    async def append_control(self, market: str, command_id: str, control: Control) -> Appended:
        """Append a kill-switch control command (exchange/stream/controls.py) to `market`'s stream."""
        return await self.append_body(market, command_id, encode_control(control))

    async def append_body(self, market: str, command_id: str, body: bytes) -> Appended:
        """Append an already validated and encoded command body under `command_id`."""
        if market not in self._markets:
            raise StreamRefused(StreamCode.UNKNOWN_MARKET, f"market was {market[:40]!r}, not listed")
        return await append_to(self._js, command_stream(market), command_subject(market),
                               command_id, body)


async def append_to(js: JetStreamContext, stream: str, subject: str, command_id: str,
                    body: bytes) -> Appended:
    """Append `body` to `stream` on `subject` under the Nats-Msg-Id `command_id`.

    The stream stores a retried append (same id, inside its duplicate window) once
    and answers it with the first copy's sequence (`Appended.duplicate`). Shared by
    the per-market command streams and the clearing shards' (exchange/stream/shard/).
    """
    if not COMMAND_ID_PATTERN.fullmatch(command_id):
        raise StreamRefused(StreamCode.BAD_COMMAND_ID, f"command id was {command_id[:40]!r}")
    if len(body) > MAX_MSG_BYTES:
        raise StreamRefused(StreamCode.BAD_COMMAND, f"command was {len(body)} bytes")
    try:
        ack = await js.publish(subject, body, timeout=PUBLISH_TIMEOUT_S, stream=stream,
                               headers={"Nats-Msg-Id": command_id})
    except (NatsTimeoutError, NoStreamResponseError, APIError) as exc:
        # Unknown outcome on a timeout: the client retries with the same id, which is safe.
        raise StreamRefused(StreamCode.STREAM_UNAVAILABLE,
                            f"command stream did not confirm: {type(exc).__name__}") from None
    return Appended(ack.seq, bool(ack.duplicate))
