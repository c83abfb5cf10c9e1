"""Transaction monitoring: run the FATF rule document over each user's deposits and withdrawals.

The rules are pure (`policies.monitoring`); this module gathers one user's
events from the database (credited chain deposits, withdrawals the user
asked for that were not refused), prices them in USD cents at the
configured prices, evaluates the active rule document and raises each
finding as a ``monitoring`` alert in the user's monitoring case. An alert's
id is derived from the document, the rule and the events it rests on, so a
re-run raises nothing twice. Monitoring holds nobody: freezing a user is an
officer's explicit decision (unlike a sanctions hit). Access events carry
no country yet, so the jurisdiction rule sees only what callers pass in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from importlib import resources

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.access.models import User
from custody.assets import get_asset
from custody.compliance.cases import AlertInput, raise_alert
from custody.wallets.models import ChainDeposit
from custody.withdrawals.models import WithdrawalRequest
from policies.monitoring import (
    DEPOSIT,
    WITHDRAWAL,
    ActivityEvent,
    MonitoringDocument,
    evaluate,
    parse_monitoring_json,
)
from policies.price import usd_cents

MONITORING = "monitoring"
MONITOR_ACTOR = "service:transaction-monitoring"
DEFAULT_RULES_RESOURCE = "data/default_monitoring_rules.json"
# Withdrawals that did not happen do not count as activity.
NOT_ACTIVITY = ("blocked", "rejected", "cancelled")
MAX_EVENTS_PER_USER = 10_000


def default_rules() -> MonitoringDocument:
    """Return the shipped FATF rule document (policies/data/default_monitoring_rules.json)."""
    return parse_monitoring_json(resources.files("policies").joinpath(DEFAULT_RULES_RESOURCE).read_bytes())


class Monitoring:
    """Evaluate the rule document over users' activity and raise alerts."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int],
                 prices_usd_cents: Mapping[str, int], rules: MonitoringDocument | None = None) -> None:
        self._sessions = sessions
        self._clock = clock
        self._prices = dict(prices_usd_cents)
        self.rules = rules or default_rules()

    def run(self, username: str | None = None) -> list[str]:
        """Evaluate every user (or one); return the ids of alerts raised now."""
        now_ms = self._clock()
        raised: list[str] = []
        with self._sessions.begin() as session:
            names = [username] if username is not None else list(
                session.scalars(select(User.username).order_by(User.username)))
            for name in names:
                raised += self._run_user(session, name, now_ms)
        return raised

    def _run_user(self, session: Session, username: str, now_ms: int) -> list[str]:
        raised = []
        for finding in evaluate(self.rules, self.events(session, username), now_ms):
            digest = hashlib.sha256("\n".join([self.rules.document_id, finding.rule_id, username,
                                               *finding.evidence]).encode()).hexdigest()
            row, new = raise_alert(session, AlertInput(
                alert_id=f"mon_{digest[:32]}", kind=MONITORING, rule_id=finding.rule_id, username=username,
                subject_kind="user", subject=username, score=finding.score,
                evidence={**finding.to_json(), "document": self.rules.document_id,
                          "document_version": self.rules.version}), now_ms=now_ms, actor=MONITOR_ACTOR)
            if new:
                raised.append(row.id)
        return raised

    def events(self, session: Session, username: str) -> list[ActivityEvent]:
        """Return ``username``'s deposits and withdrawals as monitoring events (USD at current prices)."""
        events = [
            ActivityEvent(WITHDRAWAL, w.created_ms, w.amount_usd_cents or self._usd(w.asset, w.amount),
                          counterparty=w.destination, ref=f"withdrawal:{w.id}")
            for w in session.scalars(select(WithdrawalRequest).where(
                WithdrawalRequest.username == username, WithdrawalRequest.state.not_in(NOT_ACTIVITY))
                .limit(MAX_EVENTS_PER_USER))
        ]
        events += [
            ActivityEvent(DEPOSIT, d.updated_ms, self._usd(d.asset, d.amount_minor), ref=f"deposit:{d.id}")
            for d in session.scalars(select(ChainDeposit).where(
                ChainDeposit.owner == username, ChainDeposit.status == "credited").limit(MAX_EVENTS_PER_USER))
        ]
        return events

    def _usd(self, asset: str, amount_minor: int) -> int:
        found = get_asset(asset)
        price = self._prices.get(asset)
        return 0 if found is None or price is None else usd_cents(amount_minor, price, found.decimals)
