"""The alert service: rules and notifications in the database, evaluation off the order path.

The engine thread never waits for alerts. The service is a listener of the market-data read
model that only appends each batch to a bounded queue (``MAX_QUEUED_BATCHES``; beyond it
batches are dropped and counted). `step`, run by its own job thread every ``STEP_S``, folds in
what the engine recorded (``MarketData.catch_up``), evaluates the batches and the withdrawal
and approval changes (`exchange.api.streamfeed.withdrawal_poller`) against the rules kept in
memory (`strongroom.console.alerts`), reads the margin state of the users who watch it at most
every ``RISK_EVERY_MS``, then in one transaction stores each fired alert as a notification
(and a webhook delivery for rules with ``webhook``), publishes it on the private stream's
``alerts`` channel, and makes the webhook attempts that are due (at most
``DELIVERIES_PER_STEP``; `strongroom serve` runs them as a job on a thread of their own,
`deliver_job`, so a slow receiver never delays evaluation): retries back off along
``BACKOFF_MS``; after the last one a delivery is ``dead`` (a dead letter the person can list).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody.access.models import User
from custody.access.secret_box import SecretBox
from policies.roles import Permission, Role, has_permission
from strongroom.console import webhooks
from strongroom.console.alerts import (
    MAX_RULES_PER_USER,
    AlertEvaluator,
    Fired,
    RateLimiter,
    Risk,
    Rule,
    parse_rule,
)
from strongroom.console.codes import ConsoleCode, ConsoleError
from strongroom.console.models import AlertNotification, AlertRule, AlertWebhook, WebhookDelivery

log = logging.getLogger(__name__)

STEP_S: Final = 1.0  # the job runner wakes once a second
MAX_QUEUED_BATCHES: Final = 10_000
RISK_EVERY_MS: Final = 1_000
POLL_EVERY_MS: Final = 2_000  # withdrawal and approval changes (the stream feed's own pace)
RULES_RELOAD_MS: Final = 5_000
BACKOFF_MS: Final = (1_000, 5_000, 30_000, 120_000, 600_000)
MAX_ATTEMPTS: Final = len(BACKOFF_MS) + 1
DELIVERIES_PER_STEP: Final = 20
MAX_NOTIFICATIONS_LISTED: Final = 200
SECRET_PURPOSE: Final = "alert-webhook"  # noqa: S105 (the sealing purpose, not a secret)
STREAM_CHANNEL: Final = "alerts"
DELIVERY_STATES: Final = ("pending", "delivered", "dead")

Message = tuple[str, str | None, dict[str, Any]]


class AlertService:
    """Alert rules, notifications and webhooks of every user; see the module docstring."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int], box: SecretBox, *,
                 owner_of: Callable[[str], str] = lambda a: a,
                 risk_of: Callable[[str], Risk | None] | None = None,
                 poll: Callable[[], list[Message]] | None = None,
                 publish: Callable[[list[Message]], None] | None = None,
                 allowlist: Collection[str] = (), resolver: webhooks.Resolver = webhooks.system_resolver,
                 limiter: RateLimiter | None = None) -> None:
        self._sessions = sessions
        self._clock = clock
        self._box = box
        self._owner_of = owner_of
        self.risk_of = risk_of
        self.poll = poll
        self.publish = publish
        self.catch_up: Callable[[], None] | None = None
        # The read model (``listeners``) is listened to only while some rule exists: with no
        # rules it keeps its cheaper path (no private position and balance messages).
        self.market: Any = None
        self.allowlist = frozenset(allowlist)
        self.resolver = resolver
        self.evaluator = AlertEvaluator(limiter)
        self._queue: deque[list[Message]] = deque()
        self.dropped_batches = 0
        self._dirty = True
        self._loaded_ms = 0
        self._risk_ms = 0
        self._poll_ms: int | None = None
        self._step_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        # The server runs webhook attempts on a thread of their own (`deliver_job`), so a slow
        # receiver never delays evaluation; tests run both in `step`.
        self.deliver_in_step = True

    # ------------------------------------------------------------------ engine side

    def listen(self, batch: list[Message]) -> None:
        """Take one market-data batch: append it, or count it dropped; never block."""
        if len(self._queue) >= MAX_QUEUED_BATCHES:
            self.dropped_batches += 1
            return
        self._queue.append(batch)

    # ------------------------------------------------------------------ rules (API)

    def create_rule(self, username: str, roles: frozenset[Role], body: Any) -> Rule:
        kind, params = parse_rule(body)
        if kind == "approval" and not has_permission(roles, Permission.WITHDRAW_APPROVE):
            raise ConsoleError(ConsoleCode.ALERT_INVALID,
                               "approval alerts are for approvers (withdraw.approve)")
        with self._sessions.begin() as session:
            live = session.scalar(select(func.count()).select_from(AlertRule).where(
                AlertRule.username == username, AlertRule.deleted_ms.is_(None))) or 0
            if live >= MAX_RULES_PER_USER:
                raise ConsoleError(ConsoleCode.ALERT_LIMIT_REACHED,
                                   f"you have {live} alert rules, the most allowed is {MAX_RULES_PER_USER}")
            row = AlertRule(username=username, kind=kind, params=json.dumps(params, sort_keys=True),
                            created_ms=self._clock(), deleted_ms=None)
            session.add(row)
            session.flush()
            rule = _rule(row)
        self._dirty = True
        return rule

    def rules(self, username: str) -> list[Rule]:
        with self._sessions() as session:
            rows = session.scalars(select(AlertRule).where(
                AlertRule.username == username, AlertRule.deleted_ms.is_(None)).order_by(AlertRule.id))
            return [_rule(r) for r in rows]

    def delete_rule(self, username: str, rule_id: int) -> None:
        with self._sessions.begin() as session:
            row = session.get(AlertRule, rule_id, with_for_update=True)
            # Another person's rule is "not found" too: its existence is not theirs to learn.
            if row is None or row.username != username or row.deleted_ms is not None:
                raise ConsoleError(ConsoleCode.ALERT_NOT_FOUND, f"you have no alert rule {rule_id}")
            row.deleted_ms = self._clock()
        self._dirty = True

    def notifications(self, username: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(
                select(AlertNotification).where(AlertNotification.username == username)
                .order_by(AlertNotification.id.desc()).limit(min(limit, MAX_NOTIFICATIONS_LISTED)))
            return [_notification_json(r) for r in rows]

    # ------------------------------------------------------------------ webhook (API)

    def set_webhook(self, username: str, url: object) -> tuple[dict[str, Any], str]:
        """Set the person's webhook URL and a new secret; return the view and the secret (shown once)."""
        webhooks.check_destination(url, resolver=self.resolver, allowlist=self.allowlist)
        assert isinstance(url, str)
        secret = secrets.token_hex(32)
        sealed = self._box.seal(SECRET_PURPOSE, username, secret.encode())
        now = self._clock()
        with self._sessions.begin() as session:
            row = session.get(AlertWebhook, username, with_for_update=True)
            if row is None:
                session.add(AlertWebhook(username=username, url=url, secret_sealed=sealed, created_ms=now))
            else:
                row.url, row.secret_sealed, row.created_ms = url, sealed, now
        return {"url": url, "created_ms": now}, secret

    def webhook(self, username: str) -> dict[str, Any]:
        with self._sessions() as session:
            row = session.get(AlertWebhook, username)
            if row is None:
                raise ConsoleError(ConsoleCode.WEBHOOK_NOT_CONFIGURED, "you have no webhook")
            return {"url": row.url, "created_ms": row.created_ms}

    def deliveries(self, username: str, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self._sessions() as session:
            query = select(WebhookDelivery).where(WebhookDelivery.username == username)
            if state is not None:
                query = query.where(WebhookDelivery.state == state)
            rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(min(limit, 200)))
            return [{"id": r.idempotency_key, "state": r.state, "attempts": r.attempts,
                     "next_attempt_ms": r.next_attempt_ms if r.state == "pending" else None,
                     "last_error": r.last_error, "created_ms": r.created_ms, "updated_ms": r.updated_ms}
                    for r in rows]

    # ------------------------------------------------------------------ the job

    def step(self) -> int:
        """Evaluate what arrived, store and send what fired, make due webhook attempts; return #fired."""
        with self._step_lock:
            now = self._clock()
            self._reload(now)
            if self.catch_up is not None:
                self.catch_up()
            fired: list[Fired] = []
            while self._queue:
                fired += self.evaluator.observe(self._queue.popleft(), now, self._owner_of)
            if self.poll is not None and (self._poll_ms is None or now - self._poll_ms >= POLL_EVERY_MS):
                changes = self.poll()
                # The first poll reports every recent withdrawal: that is the past, not a change.
                if self._poll_ms is not None:
                    fired += self.evaluator.observe(changes, now, self._owner_of)
                self._poll_ms = now
            if self.risk_of is not None and now - self._risk_ms >= RISK_EVERY_MS:
                self._risk_ms = now
                for username in sorted(self.evaluator.users_watching_margin()):
                    risk = self.risk_of(username)
                    if risk is not None:
                        fired += self.evaluator.observe_risk(username, risk, now)
            if fired:
                self._store(fired, now)
        if self.deliver_in_step:
            self.deliver_due(now)
        return len(fired)

    def deliver_job(self) -> None:
        """Make the due webhook attempts now (the server's webhook thread)."""
        self.deliver_due(self._clock())

    def _reload(self, now: int) -> None:
        if not self._dirty and now - self._loaded_ms < RULES_RELOAD_MS:
            return
        self._dirty, self._loaded_ms = False, now
        with self._sessions() as session:
            rows = list(session.scalars(select(AlertRule).where(AlertRule.deleted_ms.is_(None))))
            users = {r.username for r in rows}
            roles = {u.username: frozenset(u.roles.split(",")) for u in session.scalars(
                select(User).where(User.username.in_(users), User.disabled_ms.is_(None)))} if users else {}
        self.evaluator.load([_rule(r) for r in rows if r.username in roles], roles)
        if self.market is not None:
            listening = self.listen in self.market.listeners
            if self.evaluator.rules and not listening:
                self.market.listeners.append(self.listen)
            elif not self.evaluator.rules and listening:
                self.market.listeners.remove(self.listen)

    def _store(self, fired: list[Fired], now: int) -> None:
        webhook_rules = {r.id for r in self.evaluator.rules.values() if r.params.get("webhook")}
        messages: list[Message] = []
        with self._sessions.begin() as session:
            with_hook = set(session.scalars(select(AlertWebhook.username).where(
                AlertWebhook.username.in_({f.username for f in fired}))))
            for f in fired:
                data = json.dumps(f.data, sort_keys=True)
                row = AlertNotification(username=f.username, rule_id=f.rule_id, kind=f.kind,
                                        message=f.message[:512], created_ms=f.time_ms,
                                        data=data if len(data) <= 4096 else '{"truncated":true}')
                session.add(row)
                session.flush()
                view = _notification_json(row)
                messages.append((STREAM_CHANNEL, f.username, view))
                if f.rule_id in webhook_rules and f.username in with_hook:
                    body = json.dumps({"type": "alert", "id": f"alert-{row.id}", "alert": view},
                                      separators=(",", ":"), sort_keys=True)
                    session.add(WebhookDelivery(idempotency_key=f"alert-{row.id}", username=f.username,
                                                body=body, state="pending", attempts=0, next_attempt_ms=now,
                                                last_error=None, created_ms=now, updated_ms=now))
        if self.publish is not None:
            self.publish(messages)

    def deliver_due(self, now: int) -> None:
        """Make the webhook attempts that are due (bounded); back off, or dead-letter after the last."""
        with self._deliver_lock:
            self._deliver_due(now)

    def _deliver_due(self, now: int) -> None:
        with self._sessions() as session:
            due = list(session.scalars(select(WebhookDelivery).where(
                WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_ms <= now)
                .order_by(WebhookDelivery.next_attempt_ms, WebhookDelivery.id).limit(DELIVERIES_PER_STEP)))
            jobs = [(d.id, d.username, d.idempotency_key, d.body) for d in due]
        for delivery_id, username, key, body in jobs:
            attempt = self._attempt(username, key, body.encode())
            self._record(delivery_id, attempt, self._clock())

    def _attempt(self, username: str, key: str, body: bytes) -> webhooks.Attempt:
        with self._sessions() as session:
            hook = session.get(AlertWebhook, username)
            if hook is None:
                return webhooks.Attempt(False, "no webhook configured")
            url, sealed = hook.url, hook.secret_sealed
        try:
            # Checked again at every attempt: what the name resolves to may have changed since.
            destination = webhooks.check_destination(url, resolver=self.resolver, allowlist=self.allowlist)
        except ConsoleError as exc:
            return webhooks.Attempt(False, exc.message[:200])
        secret = self._box.open(SECRET_PURPOSE, username, sealed)
        timestamp = self._clock()
        headers = {webhooks.HEADER_TIMESTAMP: str(timestamp), webhooks.HEADER_IDEMPOTENCY: key,
                   webhooks.HEADER_SIGNATURE: webhooks.sign(secret, timestamp, body)}
        return webhooks.deliver(destination, body, headers)

    def _record(self, delivery_id: int, attempt: webhooks.Attempt, now: int) -> None:
        with self._sessions.begin() as session:
            row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
            if row is None or row.state != "pending":
                return
            row.attempts += 1
            row.updated_ms = now
            row.last_error = attempt.error
            if attempt.ok:
                row.state = "delivered"
            elif row.attempts >= MAX_ATTEMPTS:
                row.state = "dead"
                log.warning("webhook delivery %s is dead after %d attempts: %s", row.idempotency_key,
                            row.attempts, attempt.error)
            else:
                row.next_attempt_ms = now + BACKOFF_MS[row.attempts - 1]


def _rule(row: AlertRule) -> Rule:
    return Rule(row.id, row.username, row.kind, json.loads(row.params))


def _notification_json(row: AlertNotification) -> dict[str, Any]:
    return {"id": row.id, "rule_id": row.rule_id, "kind": row.kind, "message": row.message,
            "data": json.loads(row.data), "time_ms": row.created_ms}
