"""The exchange's per-user trading limits from compliance: KYC tier caps and jurisdiction rules.

The exchange only knows `exchange.risk.entitlements.TradingLimits`; this
composition-root adapter reads the user's tier and the jurisdiction they
were approved under (`custody.compliance.kyc.Kyc.standing`) and combines the
tier's caps (`policies.kyc`) with the jurisdiction's rules
(`policies.jurisdictions`): the lower leverage cap wins, the products are
the jurisdiction's, and a tier below the jurisdiction's minimum (tier 0
always) or a blocked jurisdiction may not open positions at all.
"""

from __future__ import annotations

from typing import Final

from custody.access.auth_cache import AuthCache
from custody.compliance.kyc import Kyc
from exchange.risk.entitlements import TradingLimits
from policies.jurisdictions import UNKNOWN_JURISDICTION
from policies.kyc import tier_limits

# The venue's quote asset is USDC (6 decimals, 1 USD): 10^6 / 100 minor units per USD cent.
USDC_MINOR_PER_USD_CENT: Final = 10_000


class KycTradingLimits:
    """`TradingLimitsProvider` over the KYC records.

    Embedded mode: one small read per order. Scale-out mode passes the
    process's `AuthCache`: the standing (tier, jurisdiction) is read once and
    kept until a KYC decision about the user is announced, at most the cache
    TTL (strongroom.auth_fast). The limits are computed from it on every
    order, so a change of the jurisdiction rules applies at once.
    """

    def __init__(self, kyc: Kyc, quote_minor_per_usd_cent: int = USDC_MINOR_PER_USD_CENT,
                 cache: AuthCache | None = None) -> None:
        assert quote_minor_per_usd_cent > 0
        self._kyc = kyc
        self._per_cent = quote_minor_per_usd_cent
        self._cache = cache

    def standing(self, username: str) -> tuple[int, str | None] | None:
        """Return the user's (KYC tier, jurisdiction), from the cache in scale-out mode."""
        if self._cache is None:
            return self._kyc.standing(username)
        return self._cache.get("standing", username, lambda: self._kyc.standing(username),
                               lambda _: username)

    def trading_limits(self, username: str) -> TradingLimits:
        standing = self.standing(username)
        if standing is None:
            return TradingLimits(basis=f"user {username!r}", refusal=f"user {username!r} is not on file")
        tier, country = standing
        rules = self._kyc.jurisdictions
        rule = rules.rules_for(country)
        caps = tier_limits(tier)
        place = f"jurisdiction {rule.code}"
        if country is None or rule.code == UNKNOWN_JURISDICTION:
            place = "unknown jurisdiction"
        basis = f"KYC tier {tier} ({caps.name}), {place} ({rules.label})"
        refusal = None
        if rule.blocked:
            refusal = f"residents of {rule.code} may not trade (blocked jurisdiction, {rules.label})"
        elif caps.max_leverage == 0 or tier < rule.min_kyc_tier:
            refusal = (f"trading needs KYC tier {rule.min_kyc_tier} for {place}, the account has tier {tier} "
                       f"({rules.label})")
        refused_products = tuple(
            (product, why) for product in ("perpetual", "future", "option")
            if (why := rules.trading_refusal(country, max(tier, rule.min_kyc_tier), product)) is not None)
        return TradingLimits(
            basis=basis,
            max_leverage=min(caps.max_leverage, rule.max_leverage),
            max_notional=(None if caps.max_notional_usd_cents is None
                          else caps.max_notional_usd_cents * self._per_cent),
            products=rule.products,
            refusal=refusal,
            product_refusals=refused_products,
        )
