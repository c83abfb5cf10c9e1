"""The access services bundled for the API and CLI: one object, built once per app.

The API reads it from ``app.extensions["strongroom.access"]``; the composition
root builds it (strongroom.wiring.build_access_services), which is where the
concrete services, and the prices the withdrawal policy uses, are chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.approvers import Approvers
from custody.access.idempotency import Idempotency
from custody.access.ledger_ops import LedgerOperations
from custody.access.mfa import Mfa
from custody.access.policy_store import PolicyStore
from custody.access.users import Users
from custody.compliance.cases import Cases
from custody.compliance.deposits import DepositCompliance
from custody.compliance.kyc import Kyc
from custody.compliance.monitoring import Monitoring
from custody.compliance.pii import PersonalData
from custody.compliance.screening import Screening
from custody.compliance.travel_rule import TravelRule
from custody.withdrawals.service import Withdrawals
from policies.replay_cache import ReplayCache
from policies.request_signing import DEFAULT_RECV_WINDOW_MS
from policies.results import Refusal

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class AccessServices:
    """Users, keys, MFA, approver keys, policy store, withdrawals and request-auth plumbing."""

    sessions: sessionmaker[Session]
    clock: Callable[[], int]
    users: Users
    mfa: Mfa
    approvers: Approvers
    # DbReplayCache (embedded) or strongroom.auth_fast.NatsReplayCache (scale-out mode).
    replay_cache: ReplayCache
    idempotency: Idempotency
    policies: PolicyStore
    withdrawals: Withdrawals
    ledger_ops: LedgerOperations
    screening: Screening
    cases: Cases
    kyc: Kyc
    monitoring: Monitoring
    personal_data: PersonalData
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS
    travel_rule: TravelRule | None = None
    deposits: DepositCompliance | None = None

    def log_refusal(
        self, key_id: str, username: str | None, refusal: Refusal, method: str, path: str
    ) -> None:
        """Record a refused request: in the security log if the key is known, else the app log."""
        log.info("request refused: key=%s code=%s %s %s", key_id[:40], refusal.code.error, method, path[:200])
        if username is None:
            return
        with self.sessions.begin() as session:
            security_log.append(
                session,
                at_ms=self.clock(),
                actor=username,
                action="auth.refused",
                subject=key_id,
                outcome=refusal.code.error,
                details={"method": method, "path": path[:200]},
            )


def app_sessions() -> sessionmaker[Session]:
    """Return the current app's database session factory."""
    sessions: sessionmaker[Session] = current_app.extensions["strongroom.sessions"]
    return sessions


def app_clock_ms() -> int:
    """Return the current app's clock reading, in milliseconds."""
    return int(current_app.extensions["strongroom.clock"]())
