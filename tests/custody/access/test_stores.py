"""Access stores on both databases: replay cache, append-only security log, secrets at rest, U256."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.replay import DbReplayCache
from custody.db import make_engine, make_session_factory
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger
from custody.security_log import SecurityEvent
from custody.withdrawals.models import WithdrawalRequest
from policies.api_key import Scope
from policies.roles import Role
from strongroom.wiring import build_access_services

from ...conftest import DATABASES, fresh_database_url


@pytest.fixture(params=DATABASES)
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    for url in fresh_database_url(request, request.param, tmp_path):
        engine = make_engine(url)
        yield make_session_factory(engine)
        engine.dispose()


def test_replay_cache_accepts_once_and_forgets_after_expiry(sessions: sessionmaker[Session]) -> None:
    cache = DbReplayCache(sessions)
    assert cache.remember("k:sig", 2_000, 1_000)
    assert not cache.remember("k:sig", 2_000, 1_500)
    assert not cache.remember("k:old", 1_000, 1_000)  # Already outside its window.
    assert cache.remember("k:sig", 4_000, 2_000)  # Expired entry purged; a new window.


def test_security_log_is_hash_chained_and_append_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        for i in range(3):
            security_log.append(
                session, at_ms=i, actor="alice", action="test", subject=str(i), details={"n": i}
            )
    with sessions() as session:
        assert security_log.verify_chain(session) == 3
    for statement in ("UPDATE access_security_log SET actor = 'mallory'", "DELETE FROM access_security_log"):
        with pytest.raises(DBAPIError), sessions.begin() as session:
            session.execute(text(statement))
    with sessions() as session:
        assert [e.actor for e in session.scalars(select(SecurityEvent))] == ["alice"] * 3


def test_security_log_refuses_secret_looking_details(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(AssertionError), sessions.begin() as session:
        security_log.append(session, at_ms=1, actor="a", action="x", details={"secret": "s"})


def test_secrets_are_never_stored_in_clear(
    sessions: sessionmaker[Session], tmp_path: Path, clock: Any
) -> None:
    keystore = LocalKeystore(tmp_path / "k.srks", "test passphrase, not a secret", scrypt_log2_n=10)
    svc = build_access_services(sessions, keystore, Ledger(sessions, clock=clock), clock)
    _, key = svc.users.create_user("alice", frozenset({Role.TRADER}), key_scopes=frozenset({Scope.READ}))
    assert key is not None and "srs_" not in repr(key)
    enrolment = svc.mfa.enrol("alice")
    found = svc.users.verified_key(key.credentials.key_id)
    assert found is not None and found[0].secret == key.credentials.secret
    with sessions() as session:
        dump = _dump(session)
    assert key.credentials.secret not in dump and key.credentials.secret[4:] not in dump
    assert enrolment.secret_base32 not in dump


def test_withdrawal_amounts_hold_exact_u256(sessions: sessionmaker[Session]) -> None:
    from custody.access.models import User

    with sessions.begin() as session:
        session.add(User(username="alice", roles="trader", kyc_tier=2, created_ms=1, disabled_ms=None))
        session.flush()
        session.add(
            WithdrawalRequest(
                id="wd_big",
                username="alice",
                asset="ETH",
                amount=10**30,
                amount_usd_cents=10**30 * 4,
                destination="0xabc",
                source_wallet="hot",
                state="blocked",
                policy_id="default",
                policy_version=1,
                policy_digest="0" * 64,
                rule_id=None,
                decision="{}",
                required_count=0,
                required_group=None,
                release_at_ms=None,
                delays_served="",
                hold_transfer_id="wd_big:hold",
                created_ms=1,
                updated_ms=1,
            )
        )
    with sessions() as session:
        row = session.get(WithdrawalRequest, "wd_big")
        assert row is not None and row.amount == 10**30 and row.amount_usd_cents == 4 * 10**30


def _dump(session: Session) -> str:
    parts = []
    bind = session.get_bind()
    for table in inspect(bind).get_table_names():
        for row in session.execute(text(f'SELECT * FROM "{table}"')):
            parts.append(repr(tuple(row)))
    return "\n".join(parts)
