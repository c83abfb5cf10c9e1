"""KYC/limits report for officers: per user, the tier, jurisdiction and every cap in force, as CSV.

One row per user (by username): the KYC tier and its name; the jurisdiction
the user was approved under (the latest approved KYC review's country; empty
when none, and the rules' ``default`` entry applies); the jurisdiction rules
document and the withdrawal policy (``id@version``) the caps come from; the
withdrawal caps the policy applies to the tier (``policies.kyc.withdrawal_limits``);
the tier's deposit and position caps; the leverage in force (the lower of the
tier's and the jurisdiction's); and the products the user may trade
(``JurisdictionRules.trading_refusal`` is None). Amounts are integers in USD
cents; an empty cap is unlimited.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.access.models import User
from custody.compliance.kyc import APPROVED
from custody.compliance.models import KycReview
from policies.jurisdictions import PRODUCTS, JurisdictionRules
from policies.kyc import tier_limits, withdrawal_limits
from policies.policy_document import PolicyDocument

LIMITS_HEADER = ("username", "kyc_tier", "tier_name", "jurisdiction", "jurisdiction_rule",
                 "jurisdiction_rules", "withdrawal_policy", "withdrawal_caps", "withdrawals_blocked",
                 "deposit_daily_usd_cents", "max_notional_usd_cents", "max_leverage", "trading_products",
                 "travel_rule_threshold_usd_cents")


@dataclass(frozen=True, slots=True)
class LimitsRow:
    """One user's standing and the caps in force for them."""

    username: str
    kyc_tier: int
    tier_name: str
    jurisdiction: str  # approved-under country, "" when none
    jurisdiction_rule: str  # the rules entry that applies ("default" when the country has none)
    jurisdiction_rules: str
    withdrawal_policy: str
    withdrawal_caps: str  # "<rule_id>:<max_usd_cents>/<window_s>s" joined by ";"
    withdrawals_blocked: bool
    deposit_daily_usd_cents: int | None
    max_notional_usd_cents: int | None
    max_leverage: int
    trading_products: str  # allowed products joined by ";"
    travel_rule_threshold_usd_cents: int


def standings(sessions: sessionmaker[Session]) -> list[tuple[str, int, str | None]]:
    """Return (username, KYC tier, approved-under country or None) for every user, by username."""
    with sessions() as session:
        users = session.execute(select(User.username, User.kyc_tier).order_by(User.username)).all()
        approved: dict[str, str] = {}
        for username, country in session.execute(
                select(KycReview.username, KycReview.country).where(KycReview.state == APPROVED)
                .order_by(KycReview.id)):
            approved[username] = country  # the latest approved review wins, as in Kyc.standing
    return [(username, tier, approved.get(username)) for username, tier in users]


def limits_rows(users: Iterable[tuple[str, int, str | None]], policy: PolicyDocument,
                rules: JurisdictionRules) -> list[LimitsRow]:
    """Return the report rows of ``users`` under ``policy`` and ``rules`` (pure)."""
    rows = []
    for username, tier, country in users:
        caps = tier_limits(tier)
        rule = rules.rules_for(country)
        limits = withdrawal_limits(policy, tier)
        velocity = ";".join(f"{c['rule_id']}:{c['max_usd_cents']}/{c['window_s']}s"
                            for c in limits if "max_usd_cents" in c)
        products = [p for p in PRODUCTS if rules.trading_refusal(country, tier, p) is None]
        rows.append(LimitsRow(
            username, tier, caps.name, country or "", rule.code, rules.label,
            f"{policy.policy_id}@{policy.version}", velocity, any(c.get("blocked") for c in limits),
            caps.deposit_daily_usd_cents, caps.max_notional_usd_cents,
            min(caps.max_leverage, rule.max_leverage) if products else 0, ";".join(products),
            rule.travel_rule_threshold_usd_cents))
    return rows


def limits_csv(rows: Iterable[LimitsRow]) -> str:
    """Return the report as CSV: ``LIMITS_HEADER`` then one row per user (empty cap: unlimited)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LIMITS_HEADER)
    for row in rows:
        writer.writerow(["" if getattr(row, name) is None else getattr(row, name) for name in LIMITS_HEADER])
    return out.getvalue()
