"""Wiring: the composition root builds custody's services from their parts.

custody's packages do not build each other; the application (strongroom.app),
the CLI (strongroom.commands) and the simulation call these builders. Prices,
the concrete stores and the clock are chosen here (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy.orm import Session, sessionmaker

from custody.access.approvers import Approvers
from custody.access.idempotency import Idempotency
from custody.access.ledger_ops import LedgerOperations
from custody.access.mfa import Mfa
from custody.access.policy_store import PolicyStore
from custody.access.replay import DbReplayCache
from custody.access.secret_box import SecretBox
from custody.access.users import Users
from custody.api.services import AccessServices
from custody.compliance.cases import Cases
from custody.compliance.deposits import DepositCompliance
from custody.compliance.kyc import Kyc
from custody.compliance.monitoring import Monitoring
from custody.compliance.pii import EnvelopeBox, PersonalData
from custody.compliance.screening import Screening
from custody.compliance.travel_rule import TRAVEL_RULE_KEY_NAME, TravelRule
from custody.keystore import Keystore
from custody.ledger.service import Ledger
from custody.withdrawals.service import Withdrawals
from policies.request_signing import DEFAULT_RECV_WINDOW_MS

# Static USD prices (cents per whole unit) until a price feed exists. A missing
# price makes any USD rule undecidable, which the policy treats as a block.
DEFAULT_PRICES_USD_CENTS: Mapping[str, int] = {"BTC": 100_000_00, "ETH": 4_000_00, "USDC": 100}


def build_access_services(
    sessions: sessionmaker[Session],
    keystore: Keystore,
    ledger: Ledger,
    clock: Callable[[], int],
    prices_usd_cents: Mapping[str, int] | None = None,
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
    travel_rule_threshold_usd_cents: int | None = None,
) -> AccessServices:
    """Build users, keys, MFA, approver keys, the policy store, withdrawals and ledger operations."""
    secrets = SecretBox(keystore)
    policies = PolicyStore(sessions, clock)
    prices = DEFAULT_PRICES_USD_CENTS if prices_usd_cents is None else prices_usd_cents
    withdrawals = Withdrawals(sessions, ledger, policies, clock, prices)
    screening = Screening(sessions, clock)
    # Every destination and whitelist entry is screened against the current sanctions list.
    withdrawals.screen = screening.screen_destination
    travel_rule = None
    if travel_rule_threshold_usd_cents is not None:
        # Withdrawals at or above the threshold must carry IVMS101 data (docs/compliance.md).
        travel_rule = TravelRule(sessions, EnvelopeBox(keystore, TRAVEL_RULE_KEY_NAME), clock,
                                 travel_rule_threshold_usd_cents)
        withdrawals.travel_rule = travel_rule.check
    kyc = Kyc(sessions, clock)
    if travel_rule is not None:
        # A user approved under a jurisdiction gets its threshold (docs/compliance.md, "Jurisdictions").
        travel_rule.jurisdictions = kyc.jurisdictions
    return AccessServices(
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
        kyc=kyc,
        monitoring=Monitoring(sessions, clock, prices),
        personal_data=PersonalData(sessions, keystore, clock),
        recv_window_ms=recv_window_ms,
        travel_rule=travel_rule,
        deposits=DepositCompliance(sessions, ledger, screening, clock, prices),
    )


def build_deposit_gate(
    sessions: sessionmaker[Session],
    ledger: Ledger,
    clock: Callable[[], int],
    prices_usd_cents: Mapping[str, int] | None = None,
) -> DepositCompliance:
    """Build compliance's gate over incoming deposits: sanctioned senders and KYC tier caps."""
    prices = DEFAULT_PRICES_USD_CENTS if prices_usd_cents is None else prices_usd_cents
    return DepositCompliance(sessions, ledger, Screening(sessions, clock), clock, prices)
