from __future__ import annotations

import re
from pathlib import Path

from policies.policy_document import Delay, RequireApprovals
from policies.policy_json import parse_policy_json
from policies.withdrawal_policy import evaluate

from .helpers import context

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy-format.md"


def test_policy_format_documented_example_parses_and_decides() -> None:
    block = re.search(r"```json\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    policy = parse_policy_json(block.group(1))
    assert (policy.policy_id, policy.version) == ("example", 4)
    assert evaluate(policy, context()).rule_id == "rest"  # 30,000 USD, daytime.
    night = context(now_ms=1_750_032_000_000 + 3_600_000)  # 01:00 UTC.
    assert isinstance(evaluate(policy, night).action, Delay)
    # By day the night rule fails on time, so a missing price does not matter.
    whale = evaluate(policy, context(amount_minor=10**9, usd_cents_per_unit=None))
    assert isinstance(whale.action, RequireApprovals)
    # At night the same rule needs a USD price; without one evaluation blocks.
    unpriced_night = context(now_ms=night.now_ms, amount_minor=10**9, usd_cents_per_unit=None)
    assert evaluate(policy, unpriced_night).rule_id is None


def test_policy_format_documents_every_default_rule() -> None:
    from policies.default_policy import load_default_policy

    text = DOC.read_text()
    for rule in load_default_policy().rules:
        name = rule.rule_id
        tiered = re.sub(r"tier\d", "tier{1,2,3}", name)
        assert f"`{name}`" in text or f"`{tiered}`" in text, name
