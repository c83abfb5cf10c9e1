"""``strongroom halt``: kill switches from the command line (docs/operations.md).

Withdrawal halts live in the database, so these commands act on a running
platform at once: ``halt withdrawals`` (one admin), ``halt lift`` (a first
admin proposes, a second one approves with a TOTP code), ``halt list``.

Market modes and circuit breakers are journaled venue commands. The venue's
journal directory belongs to the one server process that has it open (a lock
file); while the server runs, use the admin API (``strongroom api POST
/api/v1/exchange/admin/markets/SYMBOL/status``). With the server stopped,
``halt market`` / ``halt breaker`` append the command to the journal, so the
server starts with the market already halted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from strongroom.cli import _admin_services, _guard_access, _settings, _verified_admin_services


@click.group("halt")
def halt() -> None:
    """Kill switches: withdrawal halts and freezes, market halts and breakers."""


def _clock_ms() -> int:
    from custody.ledger.service import wall_clock_ms

    return int(wall_clock_ms())


@halt.command("withdrawals")
@click.option("--scope", required=True, help="global, or chain:bitcoin / chain:ethereum.")
@click.option("--by", "admin", required=True, help="The admin halting (one is enough to stop).")
@click.option("--reason", default="", help="Why, for the security log.")
def halt_withdrawals(scope: str, admin: str, reason: str) -> None:
    """Stop withdrawals of one chain or of everything, now."""
    from custody import withdrawal_halts

    def run() -> None:
        services = _admin_services(admin)
        with services.sessions.begin() as session:
            view = withdrawal_halts.halt(session, scope=scope, reason=reason, admin=admin, now_ms=_clock_ms())
            click.echo(json.dumps({"halt": view.to_json()}))

    _guard_access(run)


@halt.command("lift")
@click.argument("halt_id")
@click.option("--by", "admin", required=True, help="The admin proposing or approving the lift.")
@click.option("--mfa", "mfa_code", required=True, help="Your current TOTP code.")
def halt_lift(halt_id: str, admin: str, mfa_code: str) -> None:
    """Propose lifting a withdrawal halt, or approve another admin's proposal (it ends then)."""
    from custody import withdrawal_halts

    def run() -> None:
        services = _verified_admin_services(admin, mfa_code)
        with services.sessions.begin() as session:
            roles = services.users.find_user(admin).roles
            view = withdrawal_halts.lift(session, halt_id, admin=admin, roles=roles, now_ms=_clock_ms())
            click.echo(json.dumps({"halt": view.to_json()}))

    _guard_access(run)


@halt.command("list")
@click.option("--all", "everything", is_flag=True, help="Lifted halts too.")
def halt_list(everything: bool) -> None:
    """Print the withdrawal halts as JSON lines, oldest first."""
    from custody import withdrawal_halts
    from custody.db import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(_settings().database_url))
    with sessions() as session:
        for view in withdrawal_halts.listing(session, active_only=not everything):
            click.echo(json.dumps(view.to_json()))


def _venue_command(admin: str, action: str, symbol: str, details: dict[str, Any], apply: Any) -> None:
    """Append one control command to the stopped server's venue journal and log it."""
    from custody import security_log
    from exchange.controls import ControlError
    from exchange.instruments import MARKET_CONFIG, load_instruments
    from exchange.recovery import VenueLocked
    from exchange.service import ExchangeService
    from strongroom.cli import _ledger

    settings = _settings()

    def run() -> None:
        services = _admin_services(admin)
        try:
            svc = ExchangeService.open(_ledger(settings), load_instruments(MARKET_CONFIG),
                                       settings.data_dir / "exchange")
        except VenueLocked:
            click.echo(json.dumps({"code": 2023, "error": "invalid_control", "message": (
                "the server has the exchange journal open: use the admin API "
                f"(POST /api/v1/exchange/admin/markets/{symbol}/...) while it runs")}), err=True)
            sys.exit(1)
        try:
            with svc.command() as venue:
                if symbol not in venue.specs:
                    _fail_control(f"symbol was {symbol[:40]!r}, not listed")
                apply(venue)
        except ControlError as exc:
            _fail_control(exc.message)
        finally:
            svc.close()
        with services.sessions.begin() as session:
            security_log.append(session, at_ms=_clock_ms(), actor=admin, action=action, subject=symbol,
                                details=details)
        click.echo(json.dumps({"symbol": symbol, **details}))

    _guard_access(run)


def _stream_command(admin: str, action: str, symbol: str, details: dict[str, Any], nats_urls: str,
                    control: Any, check: Any) -> None:
    """Scale-out mode: append the control command to the market's stream, wait for its engine.

    The engines decide in stream order (docs/scale-out.md, "Kill switches"); the command is
    in the security log once the stream has it. Output: the market's status after it.
    """
    import asyncio
    import uuid

    from custody import security_log
    from exchange.controls import ControlError

    try:
        check()
    except ControlError as exc:
        _fail_control(exc.message)

    def run() -> None:
        from exchange.stream.scaleout_cli import append_and_wait

        services = _admin_services(admin)
        urls = [u.strip() for u in nats_urls.split(",") if u.strip()]
        try:
            seq, applied, status = asyncio.run(append_and_wait(
                urls, symbol, "ctl." + uuid.uuid4().hex, control))
        except Exception as exc:  # NATS unreachable, no such stream: nothing was appended
            click.echo(json.dumps({"code": 3104, "error": "stream_unavailable",
                                   "message": f"{type(exc).__name__}: {exc}"[:200]}), err=True)
            sys.exit(1)
        with services.sessions.begin() as session:
            security_log.append(session, at_ms=_clock_ms(), actor=admin, action=action,
                                subject=symbol, details={**details, "seq": seq})
        click.echo(json.dumps({"symbol": symbol, **details, "seq": seq, "applied": applied,
                               "status": status}))

    _guard_access(run)


def _shard_command(admin: str, action: str, symbol: str, details: dict[str, Any], nats_urls: str,
                   shard: str, command: Any, check: Any) -> None:
    """Clearing-shard mode: append the venue command to the shard's stream, wait for its leader.

    The shard decides in stream order (docs/scale-out.md, "Clearing shards"); the command
    is in the security log once the stream has it. Output: the leader's result code.
    """
    import asyncio
    import uuid

    from custody import security_log
    from exchange.controls import ControlError
    from exchange.stream.shard.wire import ShardCommand

    try:
        check()
    except ControlError as exc:
        _fail_control(exc.message)

    def run() -> None:
        from exchange.stream.shard.oneshot import append_and_wait_result

        services = _admin_services(admin)
        urls = [u.strip() for u in nats_urls.split(",") if u.strip()]
        try:
            seq, result = asyncio.run(append_and_wait_result(
                urls, shard, "r.ctl." + uuid.uuid4().hex, ShardCommand(command, _clock_ms())))
        except Exception as exc:  # NATS unreachable, no such stream: nothing was appended
            click.echo(json.dumps({"code": 3104, "error": "stream_unavailable",
                                   "message": f"{type(exc).__name__}: {exc}"[:200]}), err=True)
            sys.exit(1)
        with services.sessions.begin() as session:
            security_log.append(session, at_ms=_clock_ms(), actor=admin, action=action,
                                subject=symbol, details={**details, "shard": shard, "seq": seq})
        if result is not None and result.code:
            click.echo(json.dumps({"code": result.code, "error": "refused", "message": result.message,
                                   "seq": seq}), err=True)
            sys.exit(1)
        click.echo(json.dumps({"symbol": symbol, **details, "shard": shard, "seq": seq,
                               "applied": result is not None}))

    _guard_access(run)


def _fail_control(message: str) -> None:
    click.echo(json.dumps({"code": 2023, "error": "invalid_control", "message": message}), err=True)
    sys.exit(1)


@halt.command("market")
@click.argument("symbol")
@click.option("--mode", type=click.Choice(["open", "cancel_only", "halted"]), required=True)
@click.option("--by", "admin", required=True)
@click.option("--reason", default="")
@click.option("--nats", "nats_urls", default=None,
              help="Scale-out mode: NATS URLs (comma-separated); the engines apply it in stream order.")
@click.option("--shard", default=None,
              help="Clearing-shard mode (with --nats): the shard holding SYMBOL, e.g. MAIN.")
def halt_market(symbol: str, mode: str, admin: str, reason: str, nats_urls: str | None,
                shard: str | None) -> None:
    """Halt a market, make it cancel-only, or reopen it (server stopped; else use the admin API)."""
    if shard and nats_urls:
        from exchange.commands import SetMarketStatus
        from exchange.controls import check_status

        _shard_command(admin, "market.status", symbol, {"mode": mode, "reason": reason}, nats_urls,
                       shard, SetMarketStatus(symbol, mode, 0, reason),
                       lambda: check_status(mode, 0, reason))
        return
    if nats_urls:
        from exchange.controls import check_status
        from exchange.stream.controls import SetStatus

        _stream_command(admin, "market.status", symbol, {"mode": mode, "reason": reason}, nats_urls,
                        SetStatus(mode, 0, reason, _clock_ms() * 1_000_000),
                        lambda: check_status(mode, 0, reason))
        return
    _venue_command(admin, "market.status", symbol, {"mode": mode, "reason": reason},
                   lambda venue: venue.set_market_status(symbol, mode, 0, reason))


@halt.command("breaker")
@click.argument("symbol")
@click.option("--max-move-bps", type=int, required=True, help="0 removes the breaker.")
@click.option("--window-ms", type=int, default=300_000)
@click.option("--cooldown-ms", type=int, default=120_000)
@click.option("--by", "admin", required=True)
@click.option("--nats", "nats_urls", default=None,
              help="Scale-out mode: NATS URLs (comma-separated); the engines apply it in stream order.")
@click.option("--shard", default=None,
              help="Clearing-shard mode (with --nats): the shard holding SYMBOL, e.g. MAIN.")
def halt_breaker(symbol: str, max_move_bps: int, window_ms: int, cooldown_ms: int, admin: str,
                 nats_urls: str | None, shard: str | None) -> None:
    """Configure a market's max-move circuit breaker (server stopped; else use the admin API)."""
    if shard and nats_urls:
        from exchange.commands import SetBreaker as ShardSetBreaker
        from exchange.controls import check_breaker

        _shard_command(admin, "market.breaker", symbol,
                       {"max_move_bps": max_move_bps, "window_ms": window_ms,
                        "cooldown_ms": cooldown_ms}, nats_urls, shard,
                       ShardSetBreaker(symbol, max_move_bps, window_ms, cooldown_ms),
                       lambda: check_breaker(max_move_bps, window_ms, cooldown_ms))
        return
    if nats_urls:
        from exchange.controls import check_breaker
        from exchange.stream.controls import SetBreaker

        _stream_command(admin, "market.breaker", symbol,
                        {"max_move_bps": max_move_bps, "window_ms": window_ms,
                         "cooldown_ms": cooldown_ms}, nats_urls,
                        SetBreaker(max_move_bps, window_ms, cooldown_ms, _clock_ms() * 1_000_000),
                        lambda: check_breaker(max_move_bps, window_ms, cooldown_ms))
        return
    _venue_command(admin, "market.breaker", symbol,
                   {"max_move_bps": max_move_bps, "window_ms": window_ms, "cooldown_ms": cooldown_ms},
                   lambda venue: venue.set_breaker(symbol, max_move_bps, window_ms, cooldown_ms))


def register(main: click.Group) -> None:
    """Add the ``halt`` group to the ``strongroom`` CLI."""
    main.add_command(halt)
