"""Create one withdrawal and SIGKILL this process at the step named by argv[3] (crash tests).

Usage: python withdrawal_crash_worker.py DATABASE_URL NOW_MS STEP. Steps, in the order creation
runs them: before_hold, after_hold, before_log, after_log, before_commit, after_commit, none.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from custody import security_log
from custody.access.models import User
from custody.access.policy_store import PolicyStore
from custody.access.users import user_view
from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from custody.withdrawals import service as withdrawal_service
from custody.withdrawals.models import WithdrawalRequest
from custody.withdrawals.service import WithdrawalInput, Withdrawals

WITHDRAWAL_ID = "wd_crash"
AMOUNT = 1_000_000
DESTINATION = "bc1qcrashtest"
PRICES = {"BTC": 100_000_00, "ETH": 4_000_00, "USDC": 100}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _around(owner: Any, name: str, before: bool) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            _die()
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(owner, name, wrapped)


def _kill_at_commit(step: str) -> None:
    """Die just before, or just after, the commit of the transaction that writes the withdrawal."""
    armed: list[bool] = []

    @event.listens_for(Session, "before_commit")
    def _before(session: Session) -> None:
        if any(isinstance(o, WithdrawalRequest) for o in session.identity_map.values()):
            if step == "before_commit":
                _die()
            armed.append(True)

    @event.listens_for(Session, "after_commit")
    def _after(session: Session) -> None:
        if armed:
            _die()


def main() -> None:
    url, now_ms, step = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sessions = make_session_factory(make_engine(url))
    ledger = Ledger(sessions, clock=lambda: now_ms)
    withdrawals = Withdrawals(sessions, ledger, PolicyStore(sessions, lambda: now_ms), lambda: now_ms, PRICES)
    with sessions() as session:
        row = session.get(User, "alice")
        assert row is not None
        alice = user_view(row)
    if step in ("before_hold", "after_hold"):
        _around(Ledger, "submit_in", step == "before_hold")
    elif step in ("before_log", "after_log"):
        _around(security_log, "append", step == "before_log")
    elif step in ("before_commit", "after_commit"):
        _kill_at_commit(step)
    assert withdrawal_service.security_log is security_log
    view = withdrawals.create(alice, WithdrawalInput("BTC", AMOUNT, DESTINATION), WITHDRAWAL_ID)
    print(view.state, flush=True)


if __name__ == "__main__":
    main()
