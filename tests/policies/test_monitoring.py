"""Transaction-monitoring rules: each FATF indicator fires on a crafted history and not on a benign one."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.monitoring import (
    DEPOSIT,
    LOGIN,
    WITHDRAWAL,
    ActivityEvent,
    MonitoringError,
    evaluate,
    parse_monitoring_json,
    parse_monitoring_object,
)

NOW = 1_767_225_600_000
H, D = 3_600_000, 86_400_000
DOC = json.loads(resources.files("policies").joinpath("data/default_monitoring_rules.json").read_bytes())
RULES = parse_monitoring_object(DOC)


def ev(
    kind: str, ago_ms: int, usd: int = 0, source: str = "", country: str = "", ref: str = ""
) -> ActivityEvent:
    """An event ``ago_ms`` before NOW of ``usd`` whole dollars."""
    return ActivityEvent(kind, NOW - ago_ms, usd * 100, source, country, ref or f"{kind}@{ago_ms}")


CASES: list[tuple[str, str, list[ActivityEvent], bool]] = [
    # structuring: three deposits just under 10,000 USD within a day.
    ("structuring", "three just-under deposits", [ev(DEPOSIT, h * H, 9_900) for h in (1, 5, 9)], True),
    ("structuring", "two just-under deposits", [ev(DEPOSIT, h * H, 9_900) for h in (1, 5)], False),
    ("structuring", "over the threshold", [ev(DEPOSIT, h * H, 10_000) for h in (1, 5, 9)], False),
    ("structuring", "spread over three days", [ev(DEPOSIT, d * D + 1, 9_900) for d in (0, 1, 2)], False),
    ("structuring", "just-under withdrawals", [ev(WITHDRAWAL, h * H, 9_500) for h in (1, 2, 3)], True),
    # burst: ten money movements within an hour.
    ("burst", "ten in an hour", [ev(WITHDRAWAL, m * 60_000, 10) for m in range(10)], True),
    ("burst", "ten over a day", [ev(WITHDRAWAL, h * H + 1, 10) for h in range(10)], False),
    ("burst", "logins do not count", [ev(LOGIN, m * 60_000) for m in range(20)], False),
    # large first deposit.
    ("large-first-deposit", "first is 60,000", [ev(DEPOSIT, D, 60_000)], True),
    ("large-first-deposit", "large but not first", [ev(DEPOSIT, 2 * D, 100), ev(DEPOSIT, D, 60_000)], False),
    ("large-first-deposit", "small first", [ev(DEPOSIT, D, 1_000)], False),
    # full balance out soon after it came in.
    ("pass-through", "95% out next day", [ev(DEPOSIT, 30 * H, 20_000), ev(WITHDRAWAL, 2 * H, 19_000)], True),
    ("pass-through", "half out", [ev(DEPOSIT, 30 * H, 20_000), ev(WITHDRAWAL, 2 * H, 10_000)], False),
    (
        "pass-through",
        "all out a month later",
        [ev(DEPOSIT, 30 * D, 20_000), ev(WITHDRAWAL, H, 20_000)],
        False,
    ),
    # many small inbound sources.
    (
        "many-small-sources",
        "twelve sources",
        [ev(DEPOSIT, i * H, 500, source=f"src{i}") for i in range(12)],
        True,
    ),
    (
        "many-small-sources",
        "one source twelve times",
        [ev(DEPOSIT, i * H, 500, source="src") for i in range(12)],
        False,
    ),
    (
        "many-small-sources",
        "twelve large ones",
        [ev(DEPOSIT, i * H, 5_000, source=f"src{i}") for i in range(12)],
        False,
    ),
    # dormant reactivation.
    (
        "dormant-reactivation",
        "a year asleep then 20,000 out",
        [ev(DEPOSIT, 400 * D, 30_000), ev(WITHDRAWAL, H, 20_000)],
        True,
    ),
    (
        "dormant-reactivation",
        "active monthly",
        [ev(DEPOSIT, 40 * D, 30_000), ev(WITHDRAWAL, H, 20_000)],
        False,
    ),
    (
        "dormant-reactivation",
        "asleep then a small amount",
        [ev(DEPOSIT, 400 * D, 30_000), ev(WITHDRAWAL, H, 50)],
        False,
    ),
    # high-risk jurisdiction.
    ("high-risk-jurisdiction", "login from KP", [ev(LOGIN, D, country="KP")], True),
    ("high-risk-jurisdiction", "login from DE", [ev(LOGIN, D, country="DE")], False),
    ("high-risk-jurisdiction", "KP long ago", [ev(LOGIN, 60 * D, country="KP")], False),
]


@pytest.mark.parametrize(
    ("rule_id", "history", "fires"),
    [(r, h, f) for r, _, h, f in CASES],
    ids=[f"{r}-{name}" for r, name, _, _ in CASES],
)
def test_monitoring_rule_fires_on_crafted_history_not_on_benign(
    rule_id: str, history: list[ActivityEvent], fires: bool
) -> None:
    fired = {f.rule_id: f for f in evaluate(RULES, history, NOW)}
    assert (rule_id in fired) is fires, fired
    if fires:
        finding = fired[rule_id]
        assert finding.explanation and finding.evidence
        assert set(finding.evidence) <= {e.ref for e in history}


def test_every_rule_type_has_a_firing_and_a_benign_case() -> None:
    covered = {(r, f) for r, _, _, f in CASES}
    assert {(rule.rule_id, f) for rule in RULES.rules for f in (True, False)} <= covered


def test_future_events_are_not_seen() -> None:
    future = [ActivityEvent(DEPOSIT, NOW + H, 60_000_00, ref="later")]
    assert evaluate(RULES, future, NOW) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=0), "version must be a positive integer"),
        (lambda d: d["rules"][0].update(type="telepathy"), r"rules\[0\]\.type was 'telepathy'"),
        (lambda d: d["rules"][0].update(extra=1), r"rules\[0\] must have exactly the fields"),
        (lambda d: d["rules"][0].update(score=101), r"rules\[0\]\.score was 101"),
        (lambda d: d["rules"][0].update(band_pct=90), r"rules\[0\]\.band_pct was 90"),
        (lambda d: d["rules"][1].update(kinds=["teleport"]), r"rules\[1\]\.kinds must be"),
        (lambda d: d["rules"][6].update(countries=["kp"]), r"rules\[6\]\.countries must be"),
        (lambda d: d["rules"][1].update(id="structuring"), "rule ids must be unique"),
        (lambda d: d["rules"][0].update(window_s=True), r"rules\[0\]\.window_s was True"),
    ],
)
def test_invalid_rule_document_is_refused_with_its_path(mutate: object, message: str) -> None:
    document = json.loads(json.dumps(DOC))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(MonitoringError, match=message):
        parse_monitoring_json(json.dumps(document).encode())


@given(
    st.lists(
        st.tuples(
            st.sampled_from([DEPOSIT, WITHDRAWAL, LOGIN]), st.integers(0, 60 * D), st.integers(0, 10**9)
        ),
        max_size=40,
    )
)
def test_evaluate_is_deterministic_and_order_independent(raw: list[tuple[str, int, int]]) -> None:
    events = [ActivityEvent(k, NOW - a, c, ref=str(i)) for i, (k, a, c) in enumerate(raw)]
    assert evaluate(RULES, events, NOW) == evaluate(RULES, list(reversed(events)), NOW)
