"""KYC tiers 0..4: what each tier may do, and the jurisdictions Strongroom does not serve.

Pure data and decisions (no I/O). Withdrawal limits per tier are not
repeated here: they live in the withdrawal policy (rules with
``kyc_tier_in`` and a USD velocity limit, docs/policy-format.md), and
`withdrawal_limits` reads them from the active policy document, so a tier
change moves the limits the policy applies and nothing can drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.jurisdictions import default_jurisdiction_rules
from policies.policy_document import MAX_KYC_TIER, Block, Conditions, PolicyDocument, VelocityMetric

TIERS = tuple(range(MAX_KYC_TIER + 1))
# ISO 3166-1 alpha-2 codes of comprehensively sanctioned jurisdictions (OFAC/FATF call for action):
# residents cannot be onboarded above tier 0. They are the blocked entries of the jurisdiction
# rules (policies/jurisdictions.py); the shipped document blocks CU, IR, KP and SY.
DEFAULT_BLOCKED_JURISDICTIONS: frozenset[str] = default_jurisdiction_rules().blocked()
UNLIMITED = None


@dataclass(frozen=True, slots=True)
class TierLimits:
    """Caps of one tier: deposits per rolling 24h (USD cents), leverage and position notional (USD cents)."""

    tier: int
    name: str
    deposit_daily_usd_cents: int | None
    max_leverage: int
    max_notional_usd_cents: int | None

    def to_json(self) -> dict[str, object]:
        return {"tier": self.tier, "name": self.name, "deposit_daily_usd_cents": self.deposit_daily_usd_cents,
                "max_leverage": self.max_leverage, "max_notional_usd_cents": self.max_notional_usd_cents}


DEFAULT_TIERS: tuple[TierLimits, ...] = (
    TierLimits(0, "unverified", 0, 0, 0),
    TierLimits(1, "basic", 1_000_000, 3, 2_500_000),
    TierLimits(2, "verified", 10_000_000, 10, 100_000_000),
    TierLimits(3, "institutional", 1_000_000_000, 20, 5_000_000_000),
    TierLimits(4, "institutional plus", UNLIMITED, 50, UNLIMITED),
)
assert tuple(t.tier for t in DEFAULT_TIERS) == TIERS, "one TierLimits per tier, in order"


def tier_limits(tier: int) -> TierLimits:
    """Return the caps of ``tier`` (0..MAX_KYC_TIER)."""
    assert tier in TIERS, f"kyc tier was {tier}, must be 0..{MAX_KYC_TIER}"
    return DEFAULT_TIERS[tier]


def withdrawal_limits(policy: PolicyDocument, tier: int) -> list[dict[str, object]]:
    """Return the policy's blocking rules for ``tier``: USD velocity caps, or a block of the whole tier."""
    limits: list[dict[str, object]] = []
    for rule in policy.rules:
        tiers = rule.when.kyc_tier_in
        if not isinstance(rule.action, Block) or tiers is None or tier not in tiers:
            continue
        if rule.when == Conditions(kyc_tier_in=tiers):
            limits.append({"rule_id": rule.rule_id, "blocked": True})
        for limit in rule.when.velocity:
            if limit.metric is VelocityMetric.TOTAL_USD_CENTS_GT:
                limits.append({"rule_id": rule.rule_id, "window_s": limit.window.window_s,
                               "max_usd_cents": limit.threshold})
    return limits


def jurisdiction_refusal(country: str, blocked: frozenset[str] = DEFAULT_BLOCKED_JURISDICTIONS) -> str | None:
    """Return why a resident of ``country`` (ISO alpha-2) cannot be onboarded, or None."""
    code = country.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        return f"country was {country[:8]!r}, must be an ISO 3166-1 alpha-2 code"
    if code in blocked:
        return f"residents of {code} cannot be onboarded (blocked jurisdiction)"
    return None


DEPOSIT_WINDOW_MS = 24 * 60 * 60 * 1000


def deposit_cap_refusal(tier: int, credited_usd_cents: int, amount_usd_cents: int | None) -> str | None:
    """Return why a deposit must be held for review instead of credited, or None to credit it.

    ``credited_usd_cents`` is what the user was credited in the rolling
    DEPOSIT_WINDOW_MS before it. An unpriced deposit cannot be checked
    against a USD cap, so it is held (unless the tier has no cap).
    """
    assert credited_usd_cents >= 0, f"credited_usd_cents was {credited_usd_cents}, must be >= 0"
    cap = tier_limits(tier).deposit_daily_usd_cents
    if cap is UNLIMITED:
        return None
    if amount_usd_cents is None:
        return f"no USD price for the asset: the tier {tier} cap of {cap} USD cents per 24h cannot be checked"
    assert amount_usd_cents >= 0, f"amount_usd_cents was {amount_usd_cents}, must be >= 0"
    if credited_usd_cents + amount_usd_cents > cap:
        return (f"deposit of {amount_usd_cents} USD cents after {credited_usd_cents} credited in 24h "
                f"exceeds the tier {tier} cap of {cap} USD cents")
    return None
