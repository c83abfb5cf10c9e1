"""The access services bundled for the API and CLI: one object, built once per app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from custody.access import security_log
from custody.access.approvers import Approvers
from custody.access.idempotency import Idempotency
from custody.access.ledger_ops import LedgerOperations
from custody.access.mfa import Mfa
from custody.access.policy_store import PolicyStore
from custody.access.replay import DbReplayCache
from custody.access.secret_box import SecretBox
from custody.access.users import Users
from custody.compliance.cases import Cases
from custody.compliance.kyc import Kyc
from custody.compliance.monitoring import Monitoring
from custody.compliance.screening import Screening
from custody.keystore import Keystore
from custody.ledger.service import Ledger
from custody.withdrawals.service import Withdrawals
from policies.request_signing import DEFAULT_RECV_WINDOW_MS
from policies.results import Refusal

log = logging.getLogger(__name__)

# Static USD prices (cents per whole unit) until a price feed exists. A missing
# price makes any USD rule undecidable, which the policy treats as a block.
DEFAULT_PRICES_USD_CENTS: Mapping[str, int] = {"BTC": 100_000_00, "ETH": 4_000_00, "USDC": 100}


@dataclass(frozen=True)
class AccessServices:
    """Users, keys, MFA, approver keys, policy store, withdrawals and request-auth plumbing."""

    sessions: sessionmaker[Session]
    clock: Callable[[], int]
    users: Users
    mfa: Mfa
    approvers: Approvers
    replay_cache: DbReplayCache
    idempotency: Idempotency
    policies: PolicyStore
    withdrawals: Withdrawals
    ledger_ops: LedgerOperations
    screening: Screening
    cases: Cases
    kyc: Kyc
    monitoring: Monitoring
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS

    @classmethod
    def build(
        cls,
        sessions: sessionmaker[Session],
        keystore: Keystore,
        ledger: Ledger,
        clock: Callable[[], int],
        prices_usd_cents: Mapping[str, int] | None = None,
        recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
    ) -> AccessServices:
        secrets = SecretBox(keystore)
        policies = PolicyStore(sessions, clock)
        prices = DEFAULT_PRICES_USD_CENTS if prices_usd_cents is None else prices_usd_cents
        withdrawals = Withdrawals(sessions, ledger, policies, clock, prices)
        screening = Screening(sessions, clock)
        # Every destination and whitelist entry is screened against the current sanctions list.
        withdrawals.screen = screening.screen_destination
        return cls(
            sessions=sessions,
            clock=clock,
            users=Users(sessions, secrets, clock),
            mfa=Mfa(sessions, secrets, clock),
            approvers=Approvers(sessions, clock),
            replay_cache=DbReplayCache(sessions),
            idempotency=Idempotency(sessions, clock),
            policies=policies,
            withdrawals=withdrawals,
            ledger_ops=LedgerOperations(sessions, ledger, clock),
            screening=screening,
            cases=Cases(sessions, clock),
            kyc=Kyc(sessions, clock),
            monitoring=Monitoring(sessions, clock, prices),
            recv_window_ms=recv_window_ms,
        )

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
