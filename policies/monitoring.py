"""Transaction monitoring: FATF red-flag rules over one user's activity, as a versioned rule document.

Pure (no I/O): `parse_monitoring_json` validates a document (unknown types,
fields or out-of-range values are refused with the path), and `evaluate`
runs its rules over one user's events (deposits, withdrawals, logins) as of
``now_ms`` and returns scored findings, each with an explanation and the
events it rests on. docs/compliance.md documents every rule type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEPOSIT, WITHDRAWAL, LOGIN = "deposit", "withdrawal", "login"
EVENT_KINDS = frozenset({DEPOSIT, WITHDRAWAL, LOGIN})
MAX_RULES = 64
MAX_WINDOW_S = 400 * 86_400
MAX_EVENTS = 100_000
MS_PER_S = 1000


class MonitoringError(ValueError):
    """A rule document is invalid; the message names the path."""


@dataclass(frozen=True, slots=True)
class ActivityEvent:
    """One thing a user did: a deposit or withdrawal (USD cents at the time) or a login (country)."""

    kind: str
    at_ms: int
    amount_usd_cents: int = 0
    counterparty: str = ""  # a deposit's source or a withdrawal's destination, when known
    country: str = ""  # ISO 3166-1 alpha-2 of the access, when known
    ref: str = ""  # the record it came from (withdrawal id, deposit id, security-log seq)


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    type: str
    score: int
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class MonitoringDocument:
    document_id: str
    version: int
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    score: int
    explanation: str
    evidence: tuple[str, ...]  # refs of the events the finding rests on

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "score": self.score,
            "explanation": self.explanation,
            "evidence": list(self.evidence),
        }


# Each rule type: its parameters (name -> (low, high) for integers, or "countries"/"kinds").
INT_PARAM = tuple[int, int]
RULE_PARAMS: dict[str, dict[str, INT_PARAM | str]] = {
    "structuring": {
        "window_s": (60, MAX_WINDOW_S),
        "threshold_usd_cents": (1, 10**15),
        "band_pct": (1, 50),
        "min_count": (2, 1000),
    },
    "burst": {"window_s": (1, MAX_WINDOW_S), "min_count": (2, 100_000), "kinds": "kinds"},
    "large_first_deposit": {"min_usd_cents": (1, 10**15)},
    "full_balance_withdrawal": {"window_s": (60, MAX_WINDOW_S), "min_pct": (50, 100)},
    "many_small_inbound": {
        "window_s": (60, MAX_WINDOW_S),
        "min_sources": (2, 100_000),
        "max_each_usd_cents": (1, 10**15),
    },
    "dormant_reactivation": {"dormant_s": (86_400, 10 * 365 * 86_400), "min_usd_cents": (0, 10**15)},
    "high_risk_jurisdiction": {"window_s": (60, MAX_WINDOW_S), "countries": "countries"},
}


def parse_monitoring_json(raw: bytes) -> MonitoringDocument:
    """Parse and validate a rule document; raise `MonitoringError` naming the first problem."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise MonitoringError(f"document is not JSON: {exc}") from None
    return parse_monitoring_object(obj)


def parse_monitoring_object(obj: object) -> MonitoringDocument:
    if not isinstance(obj, dict) or set(obj) != {"id", "version", "rules"}:
        raise MonitoringError("document must be an object with exactly id, version, rules")
    doc_id, version, rules = obj["id"], obj["version"], obj["rules"]
    if not isinstance(doc_id, str) or not 1 <= len(doc_id) <= 128:
        raise MonitoringError("id must be a string of 1..128 characters")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MonitoringError("version must be a positive integer")
    if not isinstance(rules, list) or not 1 <= len(rules) <= MAX_RULES:
        raise MonitoringError(f"rules must be a list of 1..{MAX_RULES} rules")
    parsed = tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(rules))
    ids = [r.rule_id for r in parsed]
    if len(set(ids)) != len(ids):
        raise MonitoringError("rule ids must be unique")
    return MonitoringDocument(doc_id, version, parsed)


def _rule(obj: object, path: str) -> Rule:
    if not isinstance(obj, dict):
        raise MonitoringError(f"{path} must be an object")
    kind = obj.get("type")
    if kind not in RULE_PARAMS:
        raise MonitoringError(f"{path}.type was {str(kind)[:40]!r}, must be one of {', '.join(RULE_PARAMS)}")
    spec = RULE_PARAMS[kind]
    expected = {"id", "type", "score", *spec}
    if set(obj) != expected:
        raise MonitoringError(f"{path} must have exactly the fields {', '.join(sorted(expected))}")
    rule_id, score = obj["id"], obj["score"]
    if not isinstance(rule_id, str) or not 1 <= len(rule_id) <= 64:
        raise MonitoringError(f"{path}.id must be a string of 1..64 characters")
    params: dict[str, Any] = {}
    for name, bound in spec.items():
        value = obj[name]
        if bound == "countries":
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(c, str) and len(c) == 2 and c.isalpha() and c.isupper() for c in value)
            ):
                raise MonitoringError(
                    f"{path}.{name} must be a non-empty list of ISO alpha-2 codes (upper case)"
                )
            params[name] = frozenset(value)
        elif bound == "kinds":
            if not isinstance(value, list) or not value or not set(value) <= EVENT_KINDS:
                raise MonitoringError(
                    f"{path}.{name} must be a non-empty list of {', '.join(sorted(EVENT_KINDS))}"
                )
            params[name] = frozenset(value)
        else:
            assert isinstance(bound, tuple)
            params[name] = _int(value, f"{path}.{name}", *bound)
    return Rule(rule_id, kind, _int(score, f"{path}.score", 1, 100), params)


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MonitoringError(f"{path} was {str(value)[:40]}, must be an integer from {low} to {high}")
    return value


def evaluate(document: MonitoringDocument, events: Sequence[ActivityEvent], now_ms: int) -> list[Finding]:
    """Run every rule over one user's ``events`` (any order) as of ``now_ms``; return what fired."""
    assert len(events) <= MAX_EVENTS, f"{len(events)} events, at most {MAX_EVENTS}"
    history = sorted((e for e in events if e.at_ms <= now_ms), key=lambda e: (e.at_ms, e.ref))
    findings = []
    for rule in document.rules:
        found = _CHECKS[rule.type](rule.params, history, now_ms)
        if found is not None:
            explanation, evidence = found
            findings.append(Finding(rule.rule_id, rule.score, explanation, tuple(e.ref for e in evidence)))
    return findings


Result = tuple[str, list[ActivityEvent]] | None


def _recent(history: Sequence[ActivityEvent], now_ms: int, window_s: int) -> list[ActivityEvent]:
    return [e for e in history if e.at_ms > now_ms - window_s * MS_PER_S]


def _usd(cents: int) -> str:
    return f"{cents // 100:,}.{cents % 100:02d} USD"


def _structuring(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    threshold = p["threshold_usd_cents"]
    floor = threshold - threshold * p["band_pct"] // 100
    for kind in (DEPOSIT, WITHDRAWAL):
        near = [
            e
            for e in _recent(history, now_ms, p["window_s"])
            if e.kind == kind and floor <= e.amount_usd_cents < threshold
        ]
        if len(near) >= p["min_count"]:
            return (
                f"{len(near)} {kind}s of {_usd(floor)} up to just under {_usd(threshold)} within "
                f"{p['window_s']} s (at least {p['min_count']} is structuring)",
                near,
            )
    return None


def _burst(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    hits = [e for e in _recent(history, now_ms, p["window_s"]) if e.kind in p["kinds"]]
    if len(hits) >= p["min_count"]:
        return f"{len(hits)} events ({', '.join(sorted(p['kinds']))}) within {p['window_s']} s", hits
    return None


def _large_first_deposit(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    deposits = [e for e in history if e.kind == DEPOSIT]
    if deposits and deposits[0].amount_usd_cents >= p["min_usd_cents"]:
        first = deposits[0]
        return f"first deposit was {_usd(first.amount_usd_cents)}, at least {_usd(p['min_usd_cents'])}", [
            first
        ]
    return None


def _full_balance_withdrawal(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    window_ms = p["window_s"] * MS_PER_S
    for w in (e for e in _recent(history, now_ms, p["window_s"]) if e.kind == WITHDRAWAL):
        before = [e for e in history if e.kind == DEPOSIT and w.at_ms - window_ms <= e.at_ms <= w.at_ms]
        deposited = sum(e.amount_usd_cents for e in before)
        if deposited > 0 and w.amount_usd_cents * 100 >= deposited * p["min_pct"]:
            return (
                f"withdrew {_usd(w.amount_usd_cents)}, {w.amount_usd_cents * 100 // deposited}% of the "
                f"{_usd(deposited)} deposited in the {p['window_s']} s before",
                [*before, w],
            )
    return None


def _many_small_inbound(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    small = [
        e
        for e in _recent(history, now_ms, p["window_s"])
        if e.kind == DEPOSIT and e.counterparty and e.amount_usd_cents <= p["max_each_usd_cents"]
    ]
    sources = {e.counterparty for e in small}
    if len(sources) >= p["min_sources"]:
        return (
            f"{len(sources)} distinct sources sent deposits of at most {_usd(p['max_each_usd_cents'])} "
            f"within {p['window_s']} s",
            small,
        )
    return None


def _dormant_reactivation(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    money = [e for e in history if e.kind in (DEPOSIT, WITHDRAWAL)]
    if len(money) < 2:
        return None
    previous, latest = money[-2], money[-1]
    gap_s = (latest.at_ms - previous.at_ms) // MS_PER_S
    if gap_s >= p["dormant_s"] and latest.amount_usd_cents >= p["min_usd_cents"]:
        return (
            f"{latest.kind} of {_usd(latest.amount_usd_cents)} after {gap_s} s without activity "
            f"(dormant from {p['dormant_s']} s)",
            [previous, latest],
        )
    return None


def _high_risk_jurisdiction(p: Mapping[str, Any], history: Sequence[ActivityEvent], now_ms: int) -> Result:
    hits = [e for e in _recent(history, now_ms, p["window_s"]) if e.country in p["countries"]]
    if hits:
        countries = ", ".join(sorted({e.country for e in hits}))
        return f"{len(hits)} events from high-risk jurisdictions ({countries}) within {p['window_s']} s", hits
    return None


_CHECKS: dict[str, Callable[[Mapping[str, Any], Sequence[ActivityEvent], int], Result]] = {
    "structuring": _structuring,
    "burst": _burst,
    "large_first_deposit": _large_first_deposit,
    "full_balance_withdrawal": _full_balance_withdrawal,
    "many_small_inbound": _many_small_inbound,
    "dormant_reactivation": _dormant_reactivation,
    "high_risk_jurisdiction": _high_risk_jurisdiction,
}
assert set(_CHECKS) == set(RULE_PARAMS), "every rule type has a check"
