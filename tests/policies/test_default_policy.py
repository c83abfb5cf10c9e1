from __future__ import annotations

import json

import pytest

from policies.default_policy import default_policy_json, load_default_policy
from policies.policy_document import PolicyDocument, WalletTemperature
from policies.quorum import QuorumRequirement
from policies.results import ResultCode
from policies.roles import Role
from policies.velocity import PastWithdrawal, velocity_totals
from policies.withdrawal_policy import Decision, Destination, evaluate

from .helpers import NOW_MS, context

DAY_MS = 86_400_000
TWO_TREASURY = QuorumRequirement(2, "treasury")


@pytest.fixture(scope="module")
def policy() -> PolicyDocument:
    return load_default_policy()


def decide(
    policy: PolicyDocument, history: list[PastWithdrawal] | None = None, **changes: object
) -> Decision:
    base = context(**changes)
    windows = velocity_totals(
        history or [],
        policy.velocity_windows,
        account_id=base.account_id,
        asset=base.asset,
        now_ms=base.now_ms,
    )
    return evaluate(policy, context(velocity=windows, **changes))


def usdc(dollars: int) -> dict[str, object]:
    """Return context fields for a USDC withdrawal of `dollars`."""
    return {
        "asset": "USDC",
        "asset_decimals": 6,
        "amount_minor": dollars * 10**6,
        "usd_cents_per_unit": 100,
    }


def earlier(dollars: int, count: int = 1, account: str = "acct-1") -> list[PastWithdrawal]:
    share = dollars * 100 // count
    return [PastWithdrawal(account, "USDC", share * 10**4, share, NOW_MS - 60_000)] * count


def test_default_policy_small_hot_to_whitelisted_allowed(policy: PolicyDocument) -> None:
    decision = decide(policy, **usdc(9_999))
    assert decision.rule_id == "small-hot-allow"
    assert decision.refusal is None


def test_default_policy_large_hot_needs_two_treasury(policy: PolicyDocument) -> None:
    decision = decide(policy, **usdc(10_000))
    assert decision.rule_id == "large-hot-approvals"
    assert decision.requirement == TWO_TREASURY


def test_default_policy_unknown_destination_blocked(policy: PolicyDocument) -> None:
    decision = decide(policy, destination=Destination("bc1qnew", None), **usdc(10))
    assert decision.rule_id == "unknown-destination-block"
    assert decision.refusal is not None and decision.refusal.code is ResultCode.POLICY_BLOCKED


def test_default_policy_new_destination_delayed_24h(policy: PolicyDocument) -> None:
    fresh = Destination("bc1qnew", NOW_MS - 3_600_000)
    decision = decide(policy, destination=fresh, **usdc(10))
    assert decision.rule_id == "new-destination-timelock"
    assert decision.release_at_ms == NOW_MS + DAY_MS


def test_default_policy_after_timelock_delay_large_still_needs_approvals(
    policy: PolicyDocument,
) -> None:
    # Re-evaluated at release time, the address is past its timelock.
    fresh = Destination("bc1qnew", NOW_MS - 3_600_000)
    later = decide(
        policy,
        destination=fresh,
        now_ms=NOW_MS + DAY_MS,
        delays_served=frozenset({"new-destination-timelock"}),
        **usdc(20_000),
    )
    assert later.rule_id == "large-hot-approvals"


def test_default_policy_cold_source_needs_two_treasury(policy: PolicyDocument) -> None:
    decision = decide(policy, source_wallet=WalletTemperature.COLD, **usdc(10))
    assert decision.rule_id == "cold-source-approvals"
    assert decision.requirement == TWO_TREASURY


def test_default_policy_treasury_transfer_needs_two_treasury(policy: PolicyDocument) -> None:
    decision = decide(
        policy,
        initiator_roles=frozenset({Role.TREASURY}),
        source_wallet=WalletTemperature.COLD,
        kyc_tier=3,
        **usdc(5_000_000),
    )
    assert decision.rule_id == "treasury-internal-transfer"
    assert decision.requirement == TWO_TREASURY


def test_default_policy_unverified_account_blocked(policy: PolicyDocument) -> None:
    assert decide(policy, kyc_tier=0, **usdc(1)).rule_id == "unverified-block"


@pytest.mark.parametrize(("tier", "limit_dollars"), [(1, 2_000), (2, 50_000), (3, 1_000_000)])
def test_default_policy_daily_limit_per_kyc_tier(
    policy: PolicyDocument, tier: int, limit_dollars: int
) -> None:
    at_limit = decide(policy, earlier(limit_dollars - 100), kyc_tier=tier, **usdc(100))
    over = decide(policy, earlier(limit_dollars - 100), kyc_tier=tier, **usdc(101))
    assert at_limit.rule_id != f"tier{tier}-daily-limit"
    assert over.rule_id == f"tier{tier}-daily-limit"
    assert over.refusal is not None and over.refusal.code is ResultCode.POLICY_BLOCKED


def test_default_policy_daily_limit_window_rolls(policy: PolicyDocument) -> None:
    old = [PastWithdrawal("acct-1", "USDC", 1_999 * 10**6, 199_900, NOW_MS - DAY_MS)]
    assert decide(policy, old, kyc_tier=1, **usdc(100)).rule_id == "small-hot-allow"


def test_default_policy_many_withdrawals_go_to_compliance(policy: PolicyDocument) -> None:
    decision = decide(policy, earlier(20, count=20), **usdc(1))
    assert decision.rule_id == "rapid-withdrawals-review"
    assert decision.requirement == QuorumRequirement(1, "compliance")


def test_default_policy_platform_outflow_breaker_needs_treasury(policy: PolicyDocument) -> None:
    others = earlier(500_000, count=50, account="acct-other")
    decision = decide(policy, others, **usdc(1))
    assert decision.rule_id == "platform-outflow-breaker"


def test_default_policy_no_price_blocks_rather_than_guesses(policy: PolicyDocument) -> None:
    decision = decide(policy, **{**usdc(1), "usd_cents_per_unit": None})
    assert decision.refusal is not None
    assert decision.refusal.code is ResultCode.POLICY_PRICE_MISSING


def test_default_policy_json_is_canonical_source(policy: PolicyDocument) -> None:
    raw = json.loads(default_policy_json())
    assert raw["version"] == policy.version
    assert [r["id"] for r in raw["rules"]] == [r.rule_id for r in policy.rules]


def test_default_policy_every_rule_reachable(policy: PolicyDocument) -> None:
    reached = {
        decide(policy, **usdc(9_999)).rule_id,
        decide(policy, **usdc(10_000)).rule_id,
        decide(policy, destination=Destination("x", None), **usdc(1)).rule_id,
        decide(policy, destination=Destination("x", NOW_MS), **usdc(1)).rule_id,
        decide(policy, kyc_tier=0, **usdc(1)).rule_id,
        decide(policy, initiator_roles=frozenset({Role.TREASURY}), **usdc(1)).rule_id,
        decide(policy, source_wallet=WalletTemperature.COLD, **usdc(1)).rule_id,
        decide(policy, earlier(20, count=20), **usdc(1)).rule_id,
        decide(policy, earlier(500_000, 50, "acct-other"), **usdc(1)).rule_id,
        decide(policy, earlier(2_000), kyc_tier=1, **usdc(1)).rule_id,
        decide(policy, earlier(50_000), kyc_tier=2, **usdc(1)).rule_id,
        decide(policy, earlier(1_000_000), kyc_tier=3, **usdc(1)).rule_id,
    }
    unreached = {r.rule_id for r in policy.rules} - reached
    # The catch-all is unreachable with these inputs by design: every hot
    # withdrawal is either small or large; it guards future edits.
    assert unreached == {"default-block"}
