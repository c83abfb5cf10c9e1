"""``strongroom simulate``: the seeded whole-platform simulation (docs/simulation.md).

Prints one JSON report line per seed on stdout. On a violation it prints the
seed, the step, the invariant and the tail of the trace, shrinks the trace
(unless ``--no-shrink``) and writes the minimal replayable scenario; the exit
status is 1. ``--replay FILE`` runs a scenario written earlier.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _faults(value: str) -> tuple[str, ...]:
    from strongroom.simulation.actors import DEFAULT_FAULTS, FAULTS

    if value == "default":
        return DEFAULT_FAULTS
    if value in ("", "none"):
        return ()
    if value == "all":
        return FAULTS
    groups = {"default": DEFAULT_FAULTS, "all": FAULTS}
    chosen: tuple[str, ...] = ()
    for name in (v.strip() for v in value.split(",") if v.strip()):
        for fault in groups.get(name, (name,)):
            if fault not in chosen:
                chosen += (fault,)
    unknown = [v for v in chosen if v not in FAULTS]
    if unknown:
        raise click.BadParameter(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}",
                                 param_hint="--faults")
    return chosen


POSTGRES_ENV = "STRONGROOM_TEST_POSTGRES_URL"


def _database(value: str) -> str:
    """Resolve ``--database``: sqlite, postgres (the server in $STRONGROOM_TEST_POSTGRES_URL) or a URL."""
    import os

    if value == "sqlite" or value.startswith("postgresql://") or value.startswith("postgresql+"):
        return value
    if value == "postgres":
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            raise click.BadParameter(f"postgres needs ${POSTGRES_ENV} (a server URL) or pass the URL itself",
                                     param_hint="--database")
        return url
    raise click.BadParameter(f"database was {value!r}: sqlite, postgres or a postgresql:// server URL",
                             param_hint="--database")


@click.command("simulate")
@click.option("--seed", type=int, default=1, show_default=True, help="First seed.")
@click.option("--seeds", type=int, default=1, show_default=True, help="How many seeds (seed, seed+1, ...).")
@click.option("--steps", type=int, default=200, show_default=True, help="Steps per seed.")
@click.option("--faults", default="default", show_default=True,
              help="Comma-separated faults, or default|all|none (see docs/simulation.md for the list).")
@click.option("--traders", type=int, default=4, show_default=True)
@click.option("--audit-every", type=int, default=50, show_default=True,
              help="Run the expensive invariants (reconciliation, audit export) every N steps.")
@click.option("--replay", "replay_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Replay a scenario JSON file instead of generating steps.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("simulation-failures"), show_default=True,
              help="Where failing scenarios are written.")
@click.option("--no-shrink", is_flag=True, help="Report a failure without shrinking its trace.")
@click.option("--database", "database_option", default="sqlite", show_default=True,
              help="sqlite, postgres ($STRONGROOM_TEST_POSTGRES_URL) or a postgresql:// server URL; "
                   "each run gets a scratch database there, dropped afterwards.")
def simulate(seed: int, seeds: int, steps: int, faults: str, traders: int, audit_every: int,
             replay_file: Path | None, out_dir: Path, no_shrink: bool, database_option: str) -> None:
    """Run the platform under a seeded scheduler of actors and faults; check invariants every step."""
    import logging

    from strongroom.simulation import runner

    # The report is the JSON lines; the platform's INFO logging (recoveries, listings) would bury it.
    logging.basicConfig(level=logging.WARNING)

    database = _database(database_option)
    if replay_file is not None:
        result = runner.replay(runner.read_scenario(replay_file), database=database)
        click.echo(json.dumps(result.summary()))
        raise SystemExit(0 if result.ok else 1)
    if steps < 1 or seeds < 1 or traders < 2:
        raise click.BadParameter("--steps and --seeds must be >= 1, --traders >= 2")
    chosen = _faults(faults)
    failed = 0
    for current in range(seed, seed + seeds):
        result = runner.run(current, steps, chosen, traders=traders, audit_every=audit_every,
                            database=database)
        click.echo(json.dumps(result.summary()))
        if result.ok:
            continue
        failed += 1
        minimal = result if no_shrink else runner.shrink(result, audit_every=audit_every, database=database)
        path = out_dir / f"seed-{current}-{minimal.failure.violations[0].name}.json"  # type: ignore[union-attr]
        runner.write_scenario(path, runner.scenario_of(minimal, audit_every))
        click.echo(json.dumps({"seed": current, "failure": minimal.failure.to_dict(),  # type: ignore[union-attr]
                               "minimal_steps": len(minimal.trace), "scenario": str(path),
                               "reproduce": f"strongroom simulate --seed {current} --steps {steps} "
                                            f"--faults {','.join(chosen) or 'none'}"
                                            + ("" if database == "sqlite" else " --database postgres"),
                               "replay": f"strongroom simulate --replay {path}"}), err=True)
    raise SystemExit(1 if failed else 0)


def register(main: click.Group) -> None:
    """Attach ``simulate`` to the ``strongroom`` group."""
    main.add_command(simulate)
