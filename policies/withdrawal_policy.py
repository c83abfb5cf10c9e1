"""Evaluate a withdrawal policy: `evaluate(policy, context) -> Decision`.

Pure and deterministic: the request, the price, the velocity totals and the
current time all come in through `WithdrawalContext`. Rules are tried in
order and the first whose conditions all hold decides. Each condition is
three-valued: it holds, it fails, or it cannot be judged because an input
is missing (no price, no velocity totals). A rule with a failing condition
does not match whatever else is unknown; a rule that might match but cannot
be judged stops evaluation with a block, because skipping it could let a
withdrawal through a rule meant to stop it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from policies.identifier import MAX_ADDRESS_CHARS, check_identifier
from policies.policy_document import (
    MAX_KYC_TIER,
    Action,
    Block,
    Conditions,
    Delay,
    DestinationStatus,
    PolicyDocument,
    RequireApprovals,
    Rule,
    VelocityLimit,
    VelocityMetric,
    WalletTemperature,
)
from policies.price import MAX_ASSET_DECIMALS, usd_cents
from policies.quorum import QuorumRequirement
from policies.results import PolicyError, Refusal, ResultCode
from policies.roles import Role
from policies.velocity import MS_PER_S, VelocityTotals, VelocityWindow
from policies.wire_format import MAX_U256

MS_PER_MINUTE = 60 * 1000
MINUTES_PER_DAY = 24 * 60

_INVALID = ResultCode.POLICY_CONTEXT_INVALID


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the funds go; `whitelisted_at_ms` is None if not on the account's whitelist."""

    address: str
    whitelisted_at_ms: int | None

    def status(self, now_ms: int, timelock_s: int) -> DestinationStatus:
        if self.whitelisted_at_ms is None:
            return DestinationStatus.UNKNOWN
        if now_ms - self.whitelisted_at_ms < timelock_s * MS_PER_S:
            return DestinationStatus.TIMELOCKED
        return DestinationStatus.WHITELISTED


@dataclass(frozen=True)
class WithdrawalContext:
    """Everything a policy may look at, gathered by the caller at one instant.

    `usd_cents_per_unit` is the price of one whole unit of `asset` (None when
    no price is available). `velocity` holds past totals, excluding this
    request, for at least every window in `policy.velocity_windows`.
    `delays_served` names delay rules whose wait this withdrawal already served.
    """

    withdrawal_id: str
    account_id: str
    initiator_id: str
    initiator_roles: frozenset[Role]
    kyc_tier: int
    asset: str
    asset_decimals: int
    amount_minor: int
    usd_cents_per_unit: int | None
    destination: Destination
    source_wallet: WalletTemperature
    now_ms: int
    velocity: Mapping[VelocityWindow, VelocityTotals] = field(default_factory=dict)
    delays_served: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("withdrawal_id", "account_id", "initiator_id", "asset"):
            check_identifier(getattr(self, name), name, _INVALID)
        check_identifier(self.destination.address, "destination", _INVALID, MAX_ADDRESS_CHARS)
        _check_int(self.amount_minor, "amount_minor", 1, MAX_U256)
        _check_int(self.asset_decimals, "asset_decimals", 0, MAX_ASSET_DECIMALS)
        _check_int(self.kyc_tier, "kyc_tier", 0, MAX_KYC_TIER)
        _check_int(self.now_ms, "now_ms", 0, MAX_U256)
        if self.usd_cents_per_unit is not None:
            _check_int(self.usd_cents_per_unit, "usd_cents_per_unit", 0, MAX_U256)

    @property
    def amount_usd_cents(self) -> int | None:
        if self.usd_cents_per_unit is None:
            return None
        return usd_cents(self.amount_minor, self.usd_cents_per_unit, self.asset_decimals)


class Verdict(enum.StrEnum):
    HOLDS = "holds"
    FAILS = "fails"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ConditionCheck:
    """One condition of one rule: its verdict and what was compared."""

    condition: str
    verdict: Verdict
    detail: str
    missing: ResultCode | None = None  # Why an UNKNOWN verdict could not be judged.


class RuleOutcome(enum.StrEnum):
    MATCHED = "matched"
    NOT_MATCHED = "not_matched"
    UNDECIDABLE = "undecidable"
    DELAY_SERVED = "delay_served"


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule_id: str
    outcome: RuleOutcome
    checks: tuple[ConditionCheck, ...]

    def explain(self) -> str:
        shown = [c for c in self.checks if c.verdict is not Verdict.HOLDS] or list(self.checks)
        if self.outcome is RuleOutcome.MATCHED:
            shown = list(self.checks)
        details = "; ".join(c.detail for c in shown) or "no conditions"
        return f"rule {self.rule_id}: {self.outcome.value}: {details}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a withdrawal, which policy and rule said so, and why."""

    policy_id: str
    policy_version: int
    policy_digest: str
    rule_id: str | None
    action: Action
    trace: tuple[RuleTrace, ...]
    refusal: Refusal | None = None
    release_at_ms: int | None = None

    @property
    def requirement(self) -> QuorumRequirement | None:
        """Return the approvals to collect, if the decision requires any."""
        return self.action.requirement if isinstance(self.action, RequireApprovals) else None

    def explanation(self) -> tuple[str, ...]:
        """Return one line per rule tried, for the API and CLI."""
        return tuple(t.explain() for t in self.trace)

    def to_json(self) -> dict[str, object]:
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "policy_digest": self.policy_digest,
            "rule_id": self.rule_id,
            "action": self.action.to_json(),
            "error": None if self.refusal is None else self.refusal.to_json(),
            "release_at_ms": self.release_at_ms,
            "explanation": list(self.explanation()),
            "trace": [_trace_json(t) for t in self.trace],
        }


def evaluate(policy: PolicyDocument, context: WithdrawalContext) -> Decision:
    """Decide `context` under `policy`: the first rule whose conditions all hold wins."""
    facts = _Facts.of(policy, context)
    traces: list[RuleTrace] = []
    for rule in policy.rules:
        checks = tuple(_check_conditions(rule.when, facts))
        outcome = _outcome(rule, checks, context)
        traces.append(RuleTrace(rule.rule_id, outcome, checks))
        if outcome is RuleOutcome.MATCHED:
            return _decide(policy, rule, tuple(traces), context.now_ms)
        if outcome is RuleOutcome.UNDECIDABLE:
            return _undecidable(policy, rule, tuple(traces))
    # The parser guarantees a final catch-all rule, which always matches.
    raise AssertionError(f"policy {policy.policy_id} v{policy.version} has no catch-all rule")


def _outcome(rule: Rule, checks: tuple[ConditionCheck, ...], ctx: WithdrawalContext) -> RuleOutcome:
    verdicts = {c.verdict for c in checks}
    if Verdict.FAILS in verdicts:
        return RuleOutcome.NOT_MATCHED
    if Verdict.UNKNOWN in verdicts:
        return RuleOutcome.UNDECIDABLE
    if isinstance(rule.action, Delay) and rule.rule_id in ctx.delays_served:
        return RuleOutcome.DELAY_SERVED
    return RuleOutcome.MATCHED


def _decide(policy: PolicyDocument, rule: Rule, traces: tuple[RuleTrace, ...], now_ms: int) -> Decision:
    action = rule.action
    refusal = None
    if isinstance(action, Block):
        refusal = Refusal(ResultCode.POLICY_BLOCKED, f"rule {rule.rule_id}: {action.reason}")
    release_at_ms = now_ms + action.seconds * MS_PER_S if isinstance(action, Delay) else None
    return Decision(
        policy.policy_id,
        policy.version,
        policy.digest,
        rule.rule_id,
        action,
        traces,
        refusal,
        release_at_ms,
    )


def _undecidable(policy: PolicyDocument, rule: Rule, traces: tuple[RuleTrace, ...]) -> Decision:
    unknown = [c for c in traces[-1].checks if c.verdict is Verdict.UNKNOWN]
    code = unknown[0].missing or ResultCode.POLICY_CONTEXT_INVALID
    message = f"rule {rule.rule_id} cannot be judged: " + "; ".join(c.detail for c in unknown)
    return Decision(
        policy.policy_id,
        policy.version,
        policy.digest,
        None,
        Block(message),
        traces,
        Refusal(code, message),
    )


@dataclass(frozen=True, slots=True)
class _Facts:
    """Values derived once from the context, shared by every rule."""

    context: WithdrawalContext
    amount_usd_cents: int | None
    destination_status: DestinationStatus
    minute_of_day: int

    @classmethod
    def of(cls, policy: PolicyDocument, context: WithdrawalContext) -> _Facts:
        return cls(
            context=context,
            amount_usd_cents=context.amount_usd_cents,
            destination_status=context.destination.status(context.now_ms, policy.destination_timelock_s),
            minute_of_day=(context.now_ms // MS_PER_MINUTE) % MINUTES_PER_DAY,
        )


def _check_conditions(when: Conditions, facts: _Facts) -> list[ConditionCheck]:
    ctx = facts.context
    checks: list[ConditionCheck] = []
    memberships = (
        ("asset_in", when.asset_in, ctx.asset),
        ("destination_in", when.destination_in, facts.destination_status),
        ("source_wallet_in", when.source_wallet_in, ctx.source_wallet),
        ("kyc_tier_in", when.kyc_tier_in, ctx.kyc_tier),
    )
    for name, allowed, actual in memberships:
        if allowed is not None:
            checks.append(_membership(name, allowed, actual))
    if when.initiator_role_in is not None:
        checks.append(_roles(when.initiator_role_in, ctx.initiator_roles))
    checks.extend(_amount_checks(when, facts))
    checks.extend(_velocity(limit, facts) for limit in when.velocity)
    if when.time_of_day_utc is not None:
        window = when.time_of_day_utc
        holds = window.contains(facts.minute_of_day)
        span = f"{window.to_json()['from']}-{window.to_json()['to']}"
        now = f"{facts.minute_of_day // 60:02d}:{facts.minute_of_day % 60:02d}"
        checks.append(_check("time_of_day_utc", holds, f"time was {now} UTC, window {span}"))
    return checks


def _amount_checks(when: Conditions, facts: _Facts) -> list[ConditionCheck]:
    checks: list[ConditionCheck] = []
    minor = facts.context.amount_minor
    if when.amount_minor_gte is not None:
        checks.append(_compare("amount_minor", minor, ">=", when.amount_minor_gte))
    if when.amount_minor_lt is not None:
        checks.append(_compare("amount_minor", minor, "<", when.amount_minor_lt))
    for op, bound in ((">=", when.amount_usd_cents_gte), ("<", when.amount_usd_cents_lt)):
        if bound is None:
            continue
        if facts.amount_usd_cents is None:
            checks.append(_no_price("amount_usd_cents", facts.context.asset))
        else:
            checks.append(_compare("amount_usd_cents", facts.amount_usd_cents, op, bound))
    return checks


def _velocity(limit: VelocityLimit, facts: _Facts) -> ConditionCheck:
    window = limit.window
    name = f"velocity[{window.scope.value},{window.window_s}s].{limit.metric.value}"
    # Limits apply to the total after this request, so the request is added.
    projected = f"{name.removesuffix('_gt')} with this request"
    past = facts.context.velocity.get(window)
    if past is None:
        return ConditionCheck(
            name,
            Verdict.UNKNOWN,
            f"{name}: no totals supplied for this window",
            ResultCode.POLICY_VELOCITY_MISSING,
        )
    if limit.metric is VelocityMetric.COUNT_GT:
        return _compare(projected, past.count + 1, ">", limit.threshold)
    if limit.metric is VelocityMetric.TOTAL_MINOR_GT:
        total = past.total_minor + facts.context.amount_minor
        return _compare(projected, total, ">", limit.threshold)
    if facts.amount_usd_cents is None:
        return _no_price(name, facts.context.asset)
    total = past.total_usd_cents + facts.amount_usd_cents
    return _compare(projected, total, ">", limit.threshold)


def _compare(name: str, actual: int, op: str, bound: int) -> ConditionCheck:
    holds = {">=": actual >= bound, "<": actual < bound, ">": actual > bound}[op]
    return _check(name, holds, f"{name} was {actual}, rule needs {op} {bound}")


def _membership(name: str, allowed: frozenset[object], actual: object) -> ConditionCheck:
    shown = ", ".join(sorted(str(v) for v in allowed))
    return _check(
        name,
        actual in allowed,
        f"{name.removesuffix('_in')} was {actual}, rule needs one of [{shown}]",
    )


def _roles(allowed: frozenset[Role], actual: frozenset[Role]) -> ConditionCheck:
    shown = ", ".join(sorted(allowed))
    held = ", ".join(sorted(actual)) or "none"
    return _check(
        "initiator_role_in",
        bool(allowed & actual),
        f"initiator roles were [{held}], rule needs one of [{shown}]",
    )


def _no_price(name: str, asset: str) -> ConditionCheck:
    return ConditionCheck(
        name,
        Verdict.UNKNOWN,
        f"{name}: no USD price supplied for {asset}",
        ResultCode.POLICY_PRICE_MISSING,
    )


def _check(name: str, holds: bool, detail: str) -> ConditionCheck:
    return ConditionCheck(name, Verdict.HOLDS if holds else Verdict.FAILS, detail)


def _trace_json(trace: RuleTrace) -> dict[str, object]:
    return {
        "rule_id": trace.rule_id,
        "outcome": trace.outcome.value,
        "checks": [
            {"condition": c.condition, "verdict": c.verdict.value, "detail": c.detail} for c in trace.checks
        ],
    }


def _check_int(value: int, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(_INVALID, f"{name} was {value!r}, must be an integer in {low}..{high}")
