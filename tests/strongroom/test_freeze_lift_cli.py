"""``strongroom wallet freeze-lift-request`` / ``freeze-lift-approve``: two admins, MFA, same refusals."""

from __future__ import annotations

import json

from click.testing import CliRunner

from custody import freezes
from custody.db import make_engine, make_session_factory
from strongroom.cli import main
from tests.strongroom.test_cli import admins, env  # noqa: F401  (fixtures)

REORG_ID = "reorg:dep:bitcoin:cafe:n:a1"


def _freeze(env: dict[str, str], freeze_id: str) -> None:  # noqa: F811
    engine = make_engine(env["STRONGROOM_DATABASE_URL"])
    with make_session_factory(engine).begin() as session:
        freezes.freeze(session, freeze_id=freeze_id, owner="alice", reason="deposit reorged out",
                       raised_by="deposit-watcher", now_ms=1_767_225_600_000)
    engine.dispose()


def test_cli_freeze_lift_needs_a_second_admin_and_mfa(
    env: dict[str, str], admins: dict[str, str]  # noqa: F811
) -> None:
    _freeze(env, REORG_ID)
    runner = CliRunner()
    bad = runner.invoke(main, ["wallet", "freeze-lift-request", REORG_ID, "--by", "boss1", "--mfa", "000000",
                               "--reason", "settled"], env=env)
    assert bad.exit_code == 1
    first = runner.invoke(main, ["wallet", "freeze-lift-request", REORG_ID, "--by", "boss1",
                                 "--mfa", admins["boss1"], "--reason", "settled"], env=env)
    assert first.exit_code == 0, first.output + first.stderr
    assert json.loads(first.output)["freeze"]["lift_requested_by"] == "boss1"
    again = runner.invoke(main, ["wallet", "freeze-lift-approve", REORG_ID, "--by", "boss1",
                                 "--mfa", admins["boss1"]], env=env)
    assert again.exit_code == 1
    assert json.loads(again.stderr)["error"] in ("approver_mismatch", "mfa_code_reused")
    ok = runner.invoke(main, ["wallet", "freeze-lift-approve", REORG_ID, "--by", "boss2",
                              "--mfa", admins["boss2"]], env=env)
    assert ok.exit_code == 0, ok.output + ok.stderr
    assert json.loads(ok.output)["freeze"]["lifted_by"] == "boss1,boss2"
    assert json.loads(runner.invoke(main, ["wallet", "freezes", "--owner", "alice"], env=env).output) == []


def test_cli_freeze_lift_of_a_sanctions_freeze_is_refused(
    env: dict[str, str], admins: dict[str, str]  # noqa: F811
) -> None:
    _freeze(env, "sanctions:alice:00ff")
    refused = CliRunner().invoke(main, ["wallet", "freeze-lift-request", "sanctions:alice:00ff",
                                        "--by", "boss1", "--mfa", admins["boss1"], "--reason", "looks fine"],
                                 env=env)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "freeze_compliance_owned"


def test_cli_freeze_lift_by_a_trader_is_refused(
    env: dict[str, str], admins: dict[str, str]  # noqa: F811
) -> None:
    from policies.roles import Role
    from strongroom.commands.access import services

    _freeze(env, REORG_ID)
    services().users.create_user("trader9", frozenset({Role.TRADER}), actor="test")
    refused = CliRunner().invoke(main, ["wallet", "freeze-lift-request", REORG_ID, "--by", "trader9",
                                        "--mfa", "000000", "--reason", "x"], env=env)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"] == "permission_denied"
