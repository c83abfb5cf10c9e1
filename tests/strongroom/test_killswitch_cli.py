"""``strongroom halt``: withdrawal halts (two admins to lift) and market halts on a stopped server."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from exchange.instruments import MARKET_CONFIG, load_instruments
from exchange.recovery import DurableVenue
from strongroom.cli import main
from tests.strongroom.test_cli import admins, env  # noqa: F401  (fixtures)


def test_cli_global_freeze_lifts_only_with_a_second_admin_and_mfa(
    env: dict[str, str], admins: dict[str, str]  # noqa: F811
) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["halt", "withdrawals", "--scope", "global", "--by", "boss1",
                                "--reason", "drill"], env=env)
    assert made.exit_code == 0, made.output + made.stderr
    halt_id = json.loads(made.output)["halt"]["id"]
    listed = [json.loads(line) for line in runner.invoke(main, ["halt", "list"], env=env).output.splitlines()]
    assert [h["id"] for h in listed] == [halt_id]
    bad = runner.invoke(main, ["halt", "lift", halt_id, "--by", "boss2", "--mfa", "000000"], env=env)
    assert bad.exit_code == 1
    first = runner.invoke(main, ["halt", "lift", halt_id, "--by", "boss1", "--mfa", admins["boss1"]], env=env)
    assert first.exit_code == 0 and json.loads(first.output)["halt"]["active"] is True
    again = runner.invoke(main, ["halt", "lift", halt_id, "--by", "boss1", "--mfa", admins["boss1"]], env=env)
    assert again.exit_code == 1
    assert json.loads(again.stderr)["error"] in ("approver_mismatch", "mfa_code_reused")
    ok = runner.invoke(main, ["halt", "lift", halt_id, "--by", "boss2", "--mfa", admins["boss2"]], env=env)
    assert ok.exit_code == 0, ok.output + ok.stderr
    assert json.loads(ok.output)["halt"]["active"] is False
    assert runner.invoke(main, ["halt", "list"], env=env).output == ""


def test_cli_trader_cannot_halt_withdrawals(env: dict[str, str], admins: dict[str, str]) -> None:  # noqa: F811
    from policies.roles import Role
    from strongroom.commands.access import services

    services().users.create_user("trader9", frozenset({Role.TRADER}), actor="test")
    refused = CliRunner().invoke(main, ["halt", "withdrawals", "--scope", "global", "--by", "trader9"],
                                 env=env)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "permission_denied"


def test_cli_market_halt_is_journaled_for_the_next_start(
    env: dict[str, str], admins: dict[str, str]  # noqa: F811
) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["halt", "market", "BTC-PERP", "--mode", "halted", "--by", "boss1",
                                "--reason", "drill"], env=env)
    assert done.exit_code == 0, done.output + done.stderr
    breaker = runner.invoke(main, ["halt", "breaker", "BTC-PERP", "--max-move-bps", "300", "--by", "boss1"],
                            env=env)
    assert breaker.exit_code == 0, breaker.output + breaker.stderr
    directory = Path(env["STRONGROOM_DATA_DIR"]) / "exchange"
    durable, _ = DurableVenue.open(directory, load_instruments(MARKET_CONFIG))
    try:
        assert durable.venue.controls.mode("BTC-PERP", 0) == "halted"
        assert durable.venue.controls.breakers["BTC-PERP"].max_move_bps == 300
    finally:
        durable.close()
    unknown = runner.invoke(main, ["halt", "market", "NOPE", "--mode", "halted", "--by", "boss1"], env=env)
    assert unknown.exit_code == 1
