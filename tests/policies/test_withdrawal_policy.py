from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.policy_document import Allow, Block, Delay, RequireApprovals, WalletTemperature
from policies.policy_json import parse_policy_json
from policies.quorum import QuorumRequirement
from policies.results import PolicyError, ResultCode
from policies.roles import Role
from policies.velocity import VelocityScope, VelocityTotals, VelocityWindow
from policies.withdrawal_policy import (
    Decision,
    Destination,
    RuleOutcome,
    WithdrawalContext,
    evaluate,
)

from .helpers import NOW_MS, context, policy_json

ALLOW = {"type": "allow"}
DAY_S = 86_400
DAY_WINDOW = VelocityWindow(VelocityScope.ACCOUNT, DAY_S)


def decide(when: dict[str, object], ctx: WithdrawalContext, action: object = ALLOW) -> Decision:
    policy = parse_policy_json(policy_json({"id": "rule", "when": when, "action": action}))
    return evaluate(policy, ctx)


def matches(when: dict[str, object], ctx: WithdrawalContext) -> bool:
    return decide(when, ctx).rule_id == "rule"


# Conditions, one at a time: each matches when it should and not otherwise.


def test_condition_asset_in_matches_listed_asset_only() -> None:
    assert matches({"asset_in": ["BTC", "ETH"]}, context())
    assert not matches({"asset_in": ["ETH"]}, context())


def test_condition_amount_minor_bounds_are_gte_and_lt() -> None:
    ctx = context(amount_minor=100)
    assert matches({"asset_in": ["BTC"], "amount_minor_gte": 100}, ctx)
    assert not matches({"asset_in": ["BTC"], "amount_minor_gte": 101}, ctx)
    assert matches({"asset_in": ["BTC"], "amount_minor_lt": 101}, ctx)
    assert not matches({"asset_in": ["BTC"], "amount_minor_lt": 100}, ctx)


def test_condition_amount_usd_uses_price_and_decimals() -> None:
    # 0.5 BTC at 60,000.00 USD is 30,000.00 USD = 3,000,000 cents.
    assert matches({"amount_usd_cents_gte": 3_000_000}, context())
    assert not matches({"amount_usd_cents_gte": 3_000_001}, context())
    assert matches({"amount_usd_cents_lt": 3_000_001}, context())
    assert not matches({"amount_usd_cents_lt": 3_000_000}, context())


def test_condition_amount_usd_rounds_up_fractional_cents() -> None:
    # 1 wei at 3,000 USD is 3e-13 cents; it must count as 1 cent, never 0.
    ctx = context(asset="ETH", asset_decimals=18, amount_minor=1, usd_cents_per_unit=300_000)
    assert ctx.amount_usd_cents == 1
    assert not matches({"amount_usd_cents_lt": 1}, ctx)


def test_condition_amount_usd_handles_wei_beyond_64_bits() -> None:
    ctx = context(asset="ETH", asset_decimals=18, amount_minor=10**30, usd_cents_per_unit=300_000)
    assert ctx.amount_usd_cents == 300_000 * 10**12
    assert matches({"amount_usd_cents_gte": 300_000 * 10**12}, ctx)


@pytest.mark.parametrize(
    ("whitelisted_at_ms", "status"),
    [
        (None, "unknown"),
        (NOW_MS - DAY_S * 1000 + 1, "timelocked"),
        (NOW_MS - DAY_S * 1000, "whitelisted"),
    ],
)
def test_condition_destination_status_follows_timelock(whitelisted_at_ms: int | None, status: str) -> None:
    ctx = context(destination=Destination("bc1qdest", whitelisted_at_ms))
    assert matches({"destination_in": [status]}, ctx)
    others = {"unknown", "timelocked", "whitelisted"} - {status}
    assert not matches({"destination_in": sorted(others)}, ctx)


def test_condition_destination_timelock_duration_comes_from_policy() -> None:
    ctx = context(destination=Destination("bc1qdest", NOW_MS - 3_600_000))
    short = parse_policy_json(
        policy_json(
            {"id": "rule", "when": {"destination_in": ["whitelisted"]}, "action": ALLOW},
            timelock_s=3_600,
        )
    )
    assert evaluate(short, ctx).rule_id == "rule"
    assert not matches({"destination_in": ["whitelisted"]}, ctx)


def test_condition_source_wallet_in_matches_temperature() -> None:
    assert matches({"source_wallet_in": ["hot"]}, context())
    assert not matches({"source_wallet_in": ["cold"]}, context())
    assert matches({"source_wallet_in": ["cold"]}, context(source_wallet=WalletTemperature.COLD))


def test_condition_initiator_role_in_matches_any_held_role() -> None:
    ctx = context(initiator_roles=frozenset({Role.TRADER, Role.COMPLIANCE}))
    assert matches({"initiator_role_in": ["compliance", "treasury"]}, ctx)
    assert not matches({"initiator_role_in": ["treasury"]}, ctx)
    assert not matches({"initiator_role_in": ["treasury"]}, context(initiator_roles=frozenset()))


def test_condition_kyc_tier_in_matches_listed_tier() -> None:
    assert matches({"kyc_tier_in": [1, 2]}, context(kyc_tier=2))
    assert not matches({"kyc_tier_in": [3]}, context(kyc_tier=2))


def test_condition_velocity_usd_includes_this_request() -> None:
    limit = {"velocity": [{"scope": "account", "window_s": DAY_S, "total_usd_cents_gt": 5_000_000}]}
    under = context(velocity={DAY_WINDOW: VelocityTotals(3, 2_000_000)})
    over = context(velocity={DAY_WINDOW: VelocityTotals(3, 2_000_001)})
    assert not matches(limit, under)  # 2,000,000 + 3,000,000 = 5,000,000: not above.
    assert matches(limit, over)


def test_condition_velocity_count_includes_this_request() -> None:
    limit = {"velocity": [{"scope": "account", "window_s": DAY_S, "count_gt": 3}]}
    assert not matches(limit, context(velocity={DAY_WINDOW: VelocityTotals(2, 0)}))
    assert matches(limit, context(velocity={DAY_WINDOW: VelocityTotals(3, 0)}))


def test_condition_velocity_minor_per_asset_includes_this_request() -> None:
    window = VelocityWindow(VelocityScope.ACCOUNT_ASSET, DAY_S)
    limit = {
        "asset_in": ["BTC"],
        "velocity": [{"scope": "account_asset", "window_s": DAY_S, "total_minor_gt": 100_000_000}],
    }
    assert not matches(limit, context(velocity={window: VelocityTotals(1, 0, 50_000_000)}))
    assert matches(limit, context(velocity={window: VelocityTotals(1, 0, 50_000_001)}))


def test_condition_velocity_platform_scope_reads_platform_window() -> None:
    window = VelocityWindow(VelocityScope.PLATFORM, 3_600)
    limit = {"velocity": [{"scope": "platform", "window_s": 3_600, "total_usd_cents_gt": 10**8}]}
    assert matches(limit, context(velocity={window: VelocityTotals(500, 10**8)}))
    assert not matches(limit, context(velocity={window: VelocityTotals(500, 10**7)}))


@pytest.mark.parametrize(
    ("window", "minute", "holds"),
    [
        ({"from": "09:00", "to": "17:00"}, 9 * 60, True),
        ({"from": "09:00", "to": "17:00"}, 17 * 60, False),
        ({"from": "09:00", "to": "17:00"}, 8 * 60 + 59, False),
        ({"from": "22:00", "to": "06:00"}, 23 * 60, True),
        ({"from": "22:00", "to": "06:00"}, 5 * 60 + 59, True),
        ({"from": "22:00", "to": "06:00"}, 6 * 60, False),
        ({"from": "22:00", "to": "06:00"}, 12 * 60, False),
    ],
)
def test_condition_time_of_day_utc_window_wraps_midnight(
    window: dict[str, str], minute: int, holds: bool
) -> None:
    midnight_ms = 1_750_032_000_000  # 2025-06-16T00:00:00Z
    ctx = context(now_ms=midnight_ms + minute * 60_000)
    assert matches({"time_of_day_utc": window}, ctx) is holds


def test_conditions_are_all_required() -> None:
    assert matches({"asset_in": ["BTC"], "source_wallet_in": ["hot"]}, context())
    assert not matches({"asset_in": ["BTC"], "source_wallet_in": ["cold"]}, context())


# Actions and decisions.


def test_action_allow_decides_allow_without_refusal() -> None:
    decision = decide({"asset_in": ["BTC"]}, context())
    assert decision.action == Allow()
    assert decision.refusal is None
    assert decision.requirement is None


def test_action_require_approvals_exposes_quorum_requirement() -> None:
    action = {"type": "require_approvals", "count": 2, "group": "treasury"}
    decision = decide({"asset_in": ["BTC"]}, context(), action)
    assert isinstance(decision.action, RequireApprovals)
    assert decision.requirement == QuorumRequirement(2, "treasury")


def test_action_delay_sets_release_time() -> None:
    action = {"type": "delay", "seconds": 600, "cancellable": True}
    decision = decide({"asset_in": ["BTC"]}, context(), action)
    assert decision.action == Delay(600, True)
    assert decision.release_at_ms == NOW_MS + 600_000


def test_action_delay_already_served_falls_through_to_later_rules() -> None:
    policy = parse_policy_json(
        policy_json(
            {
                "id": "wait",
                "when": {},
                "action": {"type": "delay", "seconds": 60, "cancellable": True},
            },
            {"id": "then-allow", "when": {"asset_in": ["BTC"]}, "action": ALLOW},
        )
    )
    first = evaluate(policy, context())
    second = evaluate(policy, context(delays_served=frozenset({"wait"})))
    assert first.rule_id == "wait"
    assert second.rule_id == "then-allow"
    assert second.trace[0].outcome is RuleOutcome.DELAY_SERVED


def test_action_block_refuses_with_policy_blocked_and_reason() -> None:
    decision = decide({"asset_in": ["BTC"]}, context(), {"type": "block", "reason": "no BTC today"})
    assert decision.action == Block("no BTC today")
    assert decision.refusal is not None
    assert decision.refusal.code is ResultCode.POLICY_BLOCKED
    assert "no BTC today" in decision.refusal.message


def test_evaluate_first_matching_rule_decides() -> None:
    policy = parse_policy_json(
        policy_json(
            {
                "id": "first",
                "when": {"asset_in": ["BTC"]},
                "action": {"type": "block", "reason": "x"},
            },
            {"id": "second", "when": {"asset_in": ["BTC"]}, "action": ALLOW},
        )
    )
    assert evaluate(policy, context()).rule_id == "first"


def test_evaluate_nothing_matching_falls_to_catch_all() -> None:
    decision = decide({"asset_in": ["ETH"]}, context())
    assert decision.rule_id == "catch-all"
    assert isinstance(decision.action, Block)


def test_decision_records_policy_id_version_and_digest() -> None:
    policy = parse_policy_json(policy_json(version=7))
    decision = evaluate(policy, context())
    assert (decision.policy_id, decision.policy_version) == ("test-policy", 7)
    assert decision.policy_digest == policy.digest


def test_decision_explains_why_earlier_rules_did_not_match() -> None:
    policy = parse_policy_json(
        policy_json(
            {"id": "eth-only", "when": {"asset_in": ["ETH"]}, "action": ALLOW},
            {"id": "small", "when": {"amount_usd_cents_lt": 100}, "action": ALLOW},
            {"id": "btc", "when": {"asset_in": ["BTC"]}, "action": ALLOW},
        )
    )
    decision = evaluate(policy, context())
    assert decision.explanation() == (
        "rule eth-only: not_matched: asset was BTC, rule needs one of [ETH]",
        "rule small: not_matched: amount_usd_cents was 3000000, rule needs < 100",
        "rule btc: matched: asset was BTC, rule needs one of [BTC]",
    )
    body = decision.to_json()
    assert body["rule_id"] == "btc"
    assert body["action"] == {"type": "allow"}
    assert body["trace"][0]["checks"][0]["verdict"] == "fails"  # type: ignore[index]


def test_evaluate_missing_price_blocks_when_rule_needs_usd() -> None:
    decision = decide({"amount_usd_cents_lt": 100}, context(usd_cents_per_unit=None))
    assert decision.rule_id is None
    assert isinstance(decision.action, Block)
    assert decision.refusal is not None
    assert decision.refusal.code is ResultCode.POLICY_PRICE_MISSING
    assert decision.trace[-1].outcome is RuleOutcome.UNDECIDABLE


def test_evaluate_missing_price_irrelevant_when_other_condition_fails() -> None:
    decision = decide({"asset_in": ["ETH"], "amount_usd_cents_lt": 100}, context(usd_cents_per_unit=None))
    assert decision.rule_id == "catch-all"
    assert decision.trace[0].outcome is RuleOutcome.NOT_MATCHED


def test_evaluate_missing_velocity_window_blocks() -> None:
    limit = {"velocity": [{"scope": "account", "window_s": DAY_S, "count_gt": 3}]}
    decision = decide(limit, context(velocity={}))
    assert decision.refusal is not None
    assert decision.refusal.code is ResultCode.POLICY_VELOCITY_MISSING


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"amount_minor": -5}, "amount_minor was -5"),
        ({"amount_minor": 0}, "amount_minor was 0"),
        ({"kyc_tier": 5}, "kyc_tier was 5"),
        ({"asset_decimals": 31}, "asset_decimals was 31"),
        ({"usd_cents_per_unit": -1}, "usd_cents_per_unit was -1"),
        ({"asset": "B TC"}, "asset"),
        ({"destination": Destination("", None)}, "destination"),
    ],
)
def test_withdrawal_context_invalid_value_rejected(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        context(**changes)
    assert info.value.code is ResultCode.POLICY_CONTEXT_INVALID
    assert fragment in info.value.message


@settings(max_examples=80, deadline=None)
@given(
    amount_minor=st.integers(1, 10**12),
    price=st.integers(0, 10**9),
    threshold=st.integers(0, 10**12),
)
def test_evaluate_usd_threshold_agrees_with_exact_rational_math(
    amount_minor: int, price: int, threshold: int
) -> None:
    from fractions import Fraction

    ctx = context(amount_minor=amount_minor, usd_cents_per_unit=price)
    exact = Fraction(amount_minor * price, 10**8)
    # Rounding up makes a ">=" rule fire for any value within one cent below it, never later.
    fires = matches({"amount_usd_cents_gte": threshold}, ctx)
    assert fires == (exact > threshold - 1)


@settings(max_examples=50, deadline=None)
@given(amount_minor=st.integers(1, 10**10), tier=st.integers(0, 3))
def test_evaluate_is_deterministic(amount_minor: int, tier: int) -> None:
    policy = parse_policy_json(policy_json({"id": "r", "when": {"kyc_tier_in": [tier]}, "action": ALLOW}))
    ctx = context(amount_minor=amount_minor, kyc_tier=tier)
    assert evaluate(policy, ctx) == evaluate(policy, ctx)
