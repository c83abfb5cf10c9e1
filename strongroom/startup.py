"""Checks `strongroom serve` runs before it wires anything, so a bad start is one clear line.

Each failure the operator can fix (the database is down or the URL is wrong,
the data directory cannot be written) becomes a `StartupError` whose message
names the setting and the reason, never a traceback and never a password.
"""

from __future__ import annotations

import os
import secrets

from strongroom.settings import Settings

REASON_MAX_CHARS = 200


class StartupError(Exception):
    """The server cannot start; the message says why and which setting to fix."""


def check_startup(settings: Settings) -> None:
    """Check the data directory is writable and the database answers; raise `StartupError`."""
    check_data_dir(settings)
    check_database(settings.database_url)


def check_data_dir(settings: Settings) -> None:
    """Create the data directory if needed and prove it is writable."""
    probe = settings.data_dir / f".write-probe-{secrets.token_hex(4)}"
    try:
        settings.ensure_data_dir()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"data directory {settings.data_dir} (STRONGROOM_DATA_DIR) is not writable: "
                           f"{exc.strerror or exc}") from None


def check_database(database_url: str) -> None:
    """Parse ``database_url`` and run ``SELECT 1`` against it."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from custody.db import make_engine
    from strongroom.migrate import head_revisions

    try:
        url = make_url(database_url)
    except ArgumentError:
        raise StartupError("STRONGROOM_DATABASE_URL is not a database URL (e.g. "
                           "postgresql://user:pass@host/db or sqlite:////path/strongroom.db)") from None
    shown = url.render_as_string(hide_password=True)
    try:
        engine = make_engine(database_url)
    except (NoSuchModuleError, ArgumentError, ImportError, ValueError) as exc:
        raise StartupError(f"STRONGROOM_DATABASE_URL {shown} is not usable: {_reason(exc)}") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StartupError(f"cannot reach the database {shown} (STRONGROOM_DATABASE_URL): "
                           f"{_reason(cause)}") from None
    finally:
        engine.dispose()
    if current != head_revisions():
        raise StartupError(f"the database {shown} is at revision {', '.join(sorted(current)) or 'none'}, "
                           f"this code needs {', '.join(sorted(head_revisions()))}: run `strongroom migrate`")


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first[:REASON_MAX_CHARS]
