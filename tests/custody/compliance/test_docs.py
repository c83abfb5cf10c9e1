"""docs/compliance.md: the worked SDN example parses to the documented entry; transitions match."""

from __future__ import annotations

import json
import re
from pathlib import Path

from custody.compliance.cases import TRANSITIONS
from custody.compliance.sdn import parse_sdn

DOC = Path(__file__).resolve().parents[3] / "docs" / "compliance.md"


def _blocks() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return {name: body for _, name, body in re.findall(r"```(\w+) ([\w.]+)\n(.*?)```", text, re.S)}


def test_docs_worked_sdn_example_parses_to_the_documented_entry() -> None:
    blocks = _blocks()
    parsed = parse_sdn(blocks["sdn.csv"], blocks["alt.csv"])
    assert [entry.to_json() for entry in parsed.entries.values()] == [json.loads(blocks["entry"])]


def test_docs_case_transition_table_matches_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("Case transitions", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()[2:]]
    assert {(state, action): target for state, action, target in rows} == dict(TRANSITIONS)


def test_docs_kyc_review_transitions_match_the_code() -> None:
    from custody.compliance.kyc import TRANSITIONS as KYC_TRANSITIONS

    text = DOC.read_text(encoding="utf-8")
    section = text.split("Reviews move through:", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()[2:]]
    assert {(state, action): target for state, action, target in rows} == dict(KYC_TRANSITIONS)


def test_docs_kyc_tier_table_matches_tier_limits() -> None:
    from policies.kyc import TIERS, tier_limits

    text = DOC.read_text(encoding="utf-8")
    section = text.split("| tier | name |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()[2:]]
    assert [(int(r[0]), r[1], int(r[4])) for r in rows] == [
        (t, tier_limits(t).name, tier_limits(t).max_leverage) for t in TIERS]


def test_docs_monitoring_worked_example_gives_the_documented_findings() -> None:
    from policies.monitoring import ActivityEvent, evaluate, parse_monitoring_json

    blocks = _blocks()
    rules = parse_monitoring_json(blocks["rules.json"].encode())
    history = [ActivityEvent(**item) for item in json.loads(blocks["history.json"])]
    findings = [f.to_json() for f in evaluate(rules, history, 1_767_232_800_000)]
    assert findings == json.loads(blocks["findings.json"])


def test_docs_monitoring_rule_table_lists_every_rule_type_and_its_parameters() -> None:
    from policies.monitoring import RULE_PARAMS

    text = DOC.read_text(encoding="utf-8")
    section = text.split("| type | parameters | fires when |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()[2:]]
    documented = {r[0].strip("`"): {p.strip().strip("`") for p in r[1].split(",")} for r in rows}
    assert documented == {kind: set(params) for kind, params in RULE_PARAMS.items()}


def test_docs_travel_rule_example_validates_and_exports_as_documented() -> None:
    from custody.compliance.travel_rule import ivms101, validate_transfer_data

    blocks = _blocks()
    record = validate_transfer_data(json.loads(blocks["travel_rule.json"]), "bc1qalicecold")
    payload = {**record, "transfer": {}}
    exported = ivms101(payload, {"name": "Strongroom", "lei": None})
    assert exported["ivms101"]["beneficiary"] == json.loads(blocks["ivms101_beneficiary.json"])
