from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.policy_document import Allow, Block, Delay, RequireApprovals
from policies.policy_json import parse_policy_json
from policies.results import PolicyError, ResultCode

from .helpers import policy_json


def rule(when: object, action: object | None = None, rule_id: str = "r") -> dict[str, object]:
    return {"id": rule_id, "when": when, "action": action or {"type": "allow"}}


def error_of(text: str | bytes) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy_json(text)
    assert info.value.code is ResultCode.POLICY_DOCUMENT_INVALID
    return info.value.message


def test_policy_json_minimal_document_parses() -> None:
    policy = parse_policy_json(policy_json())
    assert policy.policy_id == "test-policy"
    assert policy.version == 1
    assert [r.rule_id for r in policy.rules] == ["catch-all"]


def test_policy_json_every_action_type_parses() -> None:
    policy = parse_policy_json(
        policy_json(
            rule({"asset_in": ["BTC"]}, {"type": "allow"}, "a"),
            rule({"asset_in": ["ETH"]}, {"type": "require_approvals", "count": 2, "group": "t"}, "b"),
            rule({"asset_in": ["X"]}, {"type": "delay", "seconds": 60, "cancellable": False}, "c"),
            rule({"asset_in": ["Y"]}, {"type": "block", "reason": "no"}, "d"),
        )
    )
    actions = [r.action for r in policy.rules]
    assert isinstance(actions[0], Allow)
    assert isinstance(actions[1], RequireApprovals) and actions[1].requirement.count == 2
    assert actions[2] == Delay(60, False)
    assert actions[3] == Block("no")


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (
            {"amount_usd_cents_gte": -5},
            "rules[0].when.amount_usd_cents_gte must be a non-negative integer, was -5",
        ),
        (
            {"amount_usd_cents_gte": "100"},
            'rules[0].when.amount_usd_cents_gte must be a non-negative integer, was "100"',
        ),
        (
            {"amount_usd_cents_lt": True},
            "rules[0].when.amount_usd_cents_lt must be a non-negative integer, was true",
        ),
        ({"amount_usd": 5}, "rules[0].when has unknown field 'amount_usd'"),
        ({"asset_in": []}, "rules[0].when.asset_in must be a list of 1 to 64 items"),
        ({"asset_in": ["BTC", "BTC"]}, "rules[0].when.asset_in lists a value twice"),
        ({"asset_in": ["B C"]}, "rules[0].when.asset_in[0] must be 1 to 128 printable ASCII"),
        ({"destination_in": ["trusted"]}, "rules[0].when.destination_in[0] must be one of"),
        ({"source_wallet_in": ["warm"]}, "rules[0].when.source_wallet_in[0] must be one of hot"),
        ({"initiator_role_in": ["root"]}, "rules[0].when.initiator_role_in[0] must be one of"),
        ({"kyc_tier_in": [5]}, "rules[0].when.kyc_tier_in[0] must be an integer from 0 to 4"),
        (
            {"amount_minor_gte": 5},
            "rules[0].when.amount_minor_gte needs asset_in with exactly one asset",
        ),
        (
            {"asset_in": ["BTC", "ETH"], "amount_minor_lt": 5},
            "rules[0].when.amount_minor_lt needs asset_in with exactly one asset",
        ),
        (
            {"amount_usd_cents_gte": 500, "amount_usd_cents_lt": 100},
            "rules[0].when.amount_usd_cents_gte was 500, must be less than amount_usd_cents_lt",
        ),
        (
            {"velocity": [{"scope": "account", "window_s": 0, "count_gt": 1}]},
            "rules[0].when.velocity[0].window_s must be an integer from 1 to 2678400, was 0",
        ),
        (
            {"velocity": [{"scope": "galaxy", "window_s": 60, "count_gt": 1}]},
            "rules[0].when.velocity[0].scope must be one of account",
        ),
        (
            {"velocity": [{"scope": "account", "window_s": 60}]},
            "rules[0].when.velocity[0] must have exactly one of count_gt",
        ),
        (
            {"velocity": [{"scope": "account", "window_s": 60, "count_gt": 1, "total_usd_cents_gt": 1}]},
            "rules[0].when.velocity[0] must have exactly one of",
        ),
        (
            {"velocity": [{"scope": "account", "window_s": 60, "total_minor_gt": 1}]},
            "rules[0].when.velocity[0].total_minor_gt needs a per-asset scope",
        ),
        (
            {"velocity": [{"window_s": 60, "count_gt": 1}]},
            "rules[0].when.velocity[0].scope is required",
        ),
        (
            {"time_of_day_utc": {"from": "24:00", "to": "06:00"}},
            'rules[0].when.time_of_day_utc.from must be a UTC time "HH:MM"',
        ),
        (
            {"time_of_day_utc": {"from": "6:00", "to": "07:00"}},
            "rules[0].when.time_of_day_utc.from must be a UTC time",
        ),
        (
            {"time_of_day_utc": {"from": "06:00", "to": "06:00"}},
            "rules[0].when.time_of_day_utc from and to must differ",
        ),
        ([], "rules[0].when must be an object, was []"),
    ],
)
def test_policy_json_bad_condition_rejected_naming_path(when: object, expected: str) -> None:
    assert error_of(policy_json(rule(when))).startswith(expected)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ({"type": "approve"}, "rules[0].action.type must be one of allow, require_approvals"),
        ({"type": "allow", "count": 2}, "rules[0].action has unknown field 'count'"),
        (
            {"type": "require_approvals", "count": 0, "group": "t"},
            "rules[0].action.count must be an integer from 1 to 16, was 0",
        ),
        ({"type": "require_approvals", "count": 2}, "rules[0].action.group is required"),
        (
            {"type": "delay", "seconds": 60, "cancellable": "yes"},
            'rules[0].action.cancellable must be true or false, was "yes"',
        ),
        (
            {"type": "delay", "seconds": 0, "cancellable": True},
            "rules[0].action.seconds must be an integer from 1",
        ),
        ({"type": "block", "reason": ""}, "rules[0].action.reason must be a string of 1 to 200"),
        ({"kind": "allow"}, "rules[0].action has unknown field 'kind'"),
    ],
)
def test_policy_json_bad_action_rejected_naming_path(action: object, expected: str) -> None:
    assert error_of(policy_json(rule({"asset_in": ["BTC"]}, action))).startswith(expected)


def test_policy_json_float_amount_rejected() -> None:
    text = policy_json(rule({"amount_usd_cents_gte": 1}))
    message = error_of(text.replace('"amount_usd_cents_gte": 1', '"amount_usd_cents_gte": 1.5'))
    assert "non-integer number 1.5" in message


def test_policy_json_nan_rejected() -> None:
    text = policy_json(rule({"amount_usd_cents_gte": 1}))
    assert "non-integer" in error_of(text.replace(": 1}", ": NaN}"))


def test_policy_json_duplicate_key_rejected() -> None:
    text = policy_json().replace('"version": 1', '"version": 1, "version": 2')
    assert "duplicate key 'version'" in error_of(text)


def test_policy_json_last_rule_with_conditions_rejected() -> None:
    doc = json.loads(policy_json())
    doc["rules"] = [rule({"asset_in": ["BTC"]})]
    assert error_of(json.dumps(doc)).startswith("rules[0].when must be empty in the last rule")


def test_policy_json_duplicate_rule_id_rejected() -> None:
    text = policy_json(rule({"asset_in": ["A"]}, rule_id="x"), rule({"asset_in": ["B"]}, rule_id="x"))
    assert error_of(text).startswith("rules[1].id 'x' is used by an earlier rule")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"schema": "v2"}, "schema must be 'strongroom/withdrawal-policy/v1'"),
        ({"version": 0}, "version must be an integer from 1"),
        ({"destination_timelock_s": -1}, "destination_timelock_s must be an integer from 0"),
        ({"rules": []}, "rules must be a list of 1 to 256 items"),
        ({"extra": 1}, "document has unknown field 'extra'"),
        ({"id": "has space"}, "id must be 1 to 128 printable ASCII"),
    ],
)
def test_policy_json_bad_top_level_field_rejected(change: dict[str, object], expected: str) -> None:
    doc = json.loads(policy_json())
    doc.update(change)
    assert error_of(json.dumps(doc)).startswith(expected)


def test_policy_json_missing_top_level_field_rejected() -> None:
    doc = json.loads(policy_json())
    del doc["rules"]
    assert error_of(json.dumps(doc)) == "rules is required"


def test_policy_json_not_json_rejected() -> None:
    assert error_of("{").startswith("document is not valid JSON")
    assert error_of(b"\xff").startswith("document is not UTF-8")
    assert error_of("[]").startswith("document must be an object")


def test_policy_json_oversized_document_rejected() -> None:
    assert "at most" in error_of(" " * (1024 * 1024 + 1))


def test_policy_digest_ignores_formatting_but_not_content() -> None:
    compact = parse_policy_json(policy_json(rule({"asset_in": ["BTC"]})))
    spaced = parse_policy_json(json.dumps(json.loads(policy_json(rule({"asset_in": ["BTC"]}))), indent=4))
    changed = parse_policy_json(policy_json(rule({"asset_in": ["ETH"]})))
    assert compact.digest == spaced.digest
    assert compact.digest != changed.digest


conditions = st.fixed_dictionaries(
    {},
    optional={
        "asset_in": st.sets(st.sampled_from(["BTC", "ETH", "USDC"]), min_size=1).map(sorted),
        "amount_usd_cents_gte": st.integers(0, 10**6),
        "destination_in": st.sets(st.sampled_from(["whitelisted", "timelocked", "unknown"]), min_size=1).map(
            sorted
        ),
        "source_wallet_in": st.sets(st.sampled_from(["hot", "cold"]), min_size=1).map(sorted),
        "initiator_role_in": st.sets(st.sampled_from(["trader", "treasury"]), min_size=1).map(sorted),
        "kyc_tier_in": st.sets(st.integers(0, 3), min_size=1).map(sorted),
        "velocity": st.lists(
            st.fixed_dictionaries(
                {
                    "scope": st.sampled_from(["account", "platform"]),
                    "window_s": st.integers(1, 86_400),
                    "count_gt": st.integers(0, 100),
                }
            ),
            min_size=1,
            max_size=3,
        ),
        "time_of_day_utc": st.fixed_dictionaries(
            {"from": st.just("22:00"), "to": st.sampled_from(["06:00", "23:30"])}
        ),
    },
)
actions = st.one_of(
    st.just({"type": "allow"}),
    st.builds(lambda c: {"type": "require_approvals", "count": c, "group": "treasury"}, st.integers(1, 5)),
    st.builds(
        lambda s, c: {"type": "delay", "seconds": s, "cancellable": c},
        st.integers(1, 999),
        st.booleans(),
    ),
    st.just({"type": "block", "reason": "because"}),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(conditions, actions), max_size=6))
def test_policy_json_roundtrip_preserves_document(
    rules: list[tuple[dict[str, object], dict[str, object]]],
) -> None:
    text = policy_json(*(rule(w, a, f"rule-{i}") for i, (w, a) in enumerate(rules)))
    policy = parse_policy_json(text)
    again = parse_policy_json(policy.canonical_bytes())
    assert again == policy
    assert again.digest == policy.digest
