"""``strongroom serve`` refuses a bad start with one clear line, never a traceback or a password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from strongroom.cli import main

from ..conftest import fresh_database_url


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database_url(request, "sqlite", tmp_path)


def _serve(env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, ["serve"], env={"STRONGROOM_KEYSTORE_PASSPHRASE": "x", **env})


def _assert_clean_refusal(result: Result, *needles: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_serve_with_postgres_down_says_so_without_the_password(tmp_path: Path) -> None:
    result = _serve({"STRONGROOM_DATA_DIR": str(tmp_path),
                     "STRONGROOM_DATABASE_URL": "postgresql+psycopg://sr:hunter2secret@127.0.0.1:9/sr"})
    _assert_clean_refusal(result, "cannot reach the database", "STRONGROOM_DATABASE_URL")
    assert "hunter2secret" not in result.output


@pytest.mark.parametrize("url", ["not a url", "nosuchdialect://x/y"])
def test_serve_with_a_bad_database_url_names_the_setting(tmp_path: Path, url: str) -> None:
    result = _serve({"STRONGROOM_DATA_DIR": str(tmp_path), "STRONGROOM_DATABASE_URL": url})
    _assert_clean_refusal(result, "STRONGROOM_DATABASE_URL")


def test_serve_with_an_unwritable_data_dir_names_the_setting(tmp_path: Path, database_url: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _serve({"STRONGROOM_DATA_DIR": str(blocker / "data"), "STRONGROOM_DATABASE_URL": database_url})
    _assert_clean_refusal(result, "STRONGROOM_DATA_DIR", "not writable")


def test_serve_with_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    result = _serve({"STRONGROOM_DATA_DIR": str(tmp_path),
                     "STRONGROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    _assert_clean_refusal(result, "strongroom migrate")


def test_serve_with_a_malformed_host_is_a_usage_error(tmp_path: Path, database_url: str) -> None:
    result = _serve({"STRONGROOM_DATA_DIR": str(tmp_path), "STRONGROOM_DATABASE_URL": database_url,
                     "STRONGROOM_HOST": "not a host!"})
    _assert_clean_refusal(result, "STRONGROOM_HOST", exit_code=2)


def test_serve_on_an_unresolvable_host_says_it_cannot_listen(tmp_path: Path, database_url: str) -> None:
    result = _serve({"STRONGROOM_DATA_DIR": str(tmp_path), "STRONGROOM_DATABASE_URL": database_url,
                     "STRONGROOM_HOST": "no-such-host.invalid"})
    _assert_clean_refusal(result, "cannot listen on no-such-host.invalid")
