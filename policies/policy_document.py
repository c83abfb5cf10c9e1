"""Withdrawal policy documents: the typed model and its JSON form.

A policy is a versioned JSON document with an ordered list of rules; the
first rule whose conditions all hold decides. `docs/policy-format.md`
describes every field. Parsing is strict (unknown fields, duplicate keys,
floats and out-of-range values are errors) because a typo in a security
policy must never silently weaken it; every error names the path of the
bad field, e.g. "rules[2].when.amount_usd_cents_gte".
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from policies.quorum import QuorumRequirement
from policies.roles import Role
from policies.velocity import VelocityWindow

POLICY_SCHEMA = "strongroom/withdrawal-policy/v1"
POLICY_DIGEST_DOMAIN = b"strongroom/policy/v1\n"
MAX_POLICY_BYTES = 1024 * 1024
MAX_RULES = 256
MAX_DELAY_S = 30 * 24 * 3600
MAX_TIMELOCK_S = 30 * 24 * 3600
# Tiers: 0 unverified, 1 basic, 2 verified, 3 institutional. The default
# policy sets a limit for each, so adding a tier means adding its limit.
MAX_KYC_TIER = 4


class DestinationStatus(enum.StrEnum):
    WHITELISTED = "whitelisted"  # On the whitelist for at least the timelock.
    TIMELOCKED = "timelocked"  # On the whitelist, but added less than the timelock ago.
    UNKNOWN = "unknown"  # Not on the account's whitelist.


class WalletTemperature(enum.StrEnum):
    HOT = "hot"
    COLD = "cold"


@dataclass(frozen=True, slots=True)
class Allow:
    kind: ClassVar[str] = "allow"

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind}


@dataclass(frozen=True, slots=True)
class RequireApprovals:
    kind: ClassVar[str] = "require_approvals"
    requirement: QuorumRequirement

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "count": self.requirement.count, "group": self.requirement.group}


@dataclass(frozen=True, slots=True)
class Delay:
    """Hold the withdrawal for `seconds`; then the caller evaluates again with
    this rule's id in `delays_served`, so later rules (approvals, limits) still
    apply after the wait."""

    kind: ClassVar[str] = "delay"
    seconds: int
    cancellable: bool

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "seconds": self.seconds, "cancellable": self.cancellable}


@dataclass(frozen=True, slots=True)
class Block:
    kind: ClassVar[str] = "block"
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"type": self.kind, "reason": self.reason}


Action = Allow | RequireApprovals | Delay | Block


class VelocityMetric(enum.StrEnum):
    TOTAL_USD_CENTS_GT = "total_usd_cents_gt"
    TOTAL_MINOR_GT = "total_minor_gt"
    COUNT_GT = "count_gt"


@dataclass(frozen=True, slots=True)
class VelocityLimit:
    """Holds when the window's total, including this request, exceeds one threshold."""

    window: VelocityWindow
    metric: VelocityMetric
    threshold: int

    def to_json(self) -> dict[str, object]:
        return {
            "scope": self.window.scope.value,
            "window_s": self.window.window_s,
            self.metric.value: self.threshold,
        }


@dataclass(frozen=True, slots=True)
class TimeOfDayWindow:
    """UTC minutes of the day in [from, to); wraps past midnight when from > to."""

    from_minute: int
    to_minute: int

    def contains(self, minute: int) -> bool:
        if self.from_minute < self.to_minute:
            return self.from_minute <= minute < self.to_minute
        return minute >= self.from_minute or minute < self.to_minute

    def to_json(self) -> dict[str, object]:
        return {"from": _hhmm(self.from_minute), "to": _hhmm(self.to_minute)}


@dataclass(frozen=True, slots=True)
class Conditions:
    """All present conditions must hold for a rule to match; none means always."""

    asset_in: frozenset[str] | None = None
    amount_minor_gte: int | None = None
    amount_minor_lt: int | None = None
    amount_usd_cents_gte: int | None = None
    amount_usd_cents_lt: int | None = None
    destination_in: frozenset[DestinationStatus] | None = None
    source_wallet_in: frozenset[WalletTemperature] | None = None
    initiator_role_in: frozenset[Role] | None = None
    kyc_tier_in: frozenset[int] | None = None
    velocity: tuple[VelocityLimit, ...] = ()
    time_of_day_utc: TimeOfDayWindow | None = None

    @property
    def is_empty(self) -> bool:
        return self == Conditions()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in _SET_CONDITIONS:
            values = getattr(self, name)
            if values is not None:
                out[name] = sorted(values)
        for name in _INT_CONDITIONS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.velocity:
            out["velocity"] = [limit.to_json() for limit in self.velocity]
        if self.time_of_day_utc is not None:
            out["time_of_day_utc"] = self.time_of_day_utc.to_json()
        return out


_SET_CONDITIONS = (
    "asset_in",
    "destination_in",
    "source_wallet_in",
    "initiator_role_in",
    "kyc_tier_in",
)
_INT_CONDITIONS = (
    "amount_minor_gte",
    "amount_minor_lt",
    "amount_usd_cents_gte",
    "amount_usd_cents_lt",
)


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    when: Conditions
    action: Action
    description: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.rule_id}
        if self.description:
            out["description"] = self.description
        out["when"] = self.when.to_json()
        out["action"] = self.action.to_json()
        return out


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A validated withdrawal policy. Build it with `policy_json.parse_policy_json`."""

    policy_id: str
    version: int
    destination_timelock_s: int
    rules: tuple[Rule, ...]
    description: str = ""
    velocity_windows: frozenset[VelocityWindow] = field(init=False)

    def __post_init__(self) -> None:
        # A policy that can fall off its end would leave a withdrawal undecided.
        assert self.rules and self.rules[-1].when.is_empty, "last rule must be a catch-all"
        windows = frozenset(v.window for r in self.rules for v in r.when.velocity)
        object.__setattr__(self, "velocity_windows", windows)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"schema": POLICY_SCHEMA, "id": self.policy_id}
        out["version"] = self.version
        if self.description:
            out["description"] = self.description
        out["destination_timelock_s"] = self.destination_timelock_s
        out["rules"] = [rule.to_json() for rule in self.rules]
        return out

    def canonical_bytes(self) -> bytes:
        """Return sorted-key compact UTF-8 JSON: one byte string per policy."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )

    @property
    def digest(self) -> str:
        """Return the SHA-256 hex digest that identifies this exact policy."""
        return hashlib.sha256(POLICY_DIGEST_DOMAIN + self.canonical_bytes()).hexdigest()

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.rule_id == rule_id), None)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
