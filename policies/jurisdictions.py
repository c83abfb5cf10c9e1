"""Per-jurisdiction rules: what a resident may trade, at which leverage and KYC tier, and the travel rule.

Pure (no I/O). A rules document is versioned JSON (docs/compliance.md,
"Jurisdictions"), validated like the withdrawal policy: exactly ``id``,
``version``, ``default`` and ``jurisdictions``; every entry's fields are
checked and anything else is refused with its path. An entry names only
what differs from ``default``; `JurisdictionRules.rules_for` merges them.
A blocked jurisdiction's residents are not onboarded (KYC requests are
rejected at once) and do not trade; this replaces the separate list of
blocked jurisdictions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from policies.policy_document import MAX_KYC_TIER

PRODUCTS: tuple[str, ...] = ("spot", "perpetual", "future", "option")
MAX_LEVERAGE = 100
MAX_THRESHOLD_USD_CENTS = 10**12
MAX_JURISDICTIONS = 300
ENTRY_FIELDS = frozenset({"blocked", "products", "max_leverage", "min_kyc_tier",
                          "travel_rule_threshold_usd_cents"})
UNKNOWN_JURISDICTION = "default"


class JurisdictionRulesError(ValueError):
    """A rules document is invalid; the message names the path."""


@dataclass(frozen=True, slots=True)
class JurisdictionRule:
    """What one jurisdiction's residents may do (``code`` "default" when none applies)."""

    code: str
    blocked: bool
    products: frozenset[str]
    max_leverage: int
    min_kyc_tier: int
    travel_rule_threshold_usd_cents: int

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "blocked": self.blocked,
                "products": [p for p in PRODUCTS if p in self.products], "max_leverage": self.max_leverage,
                "min_kyc_tier": self.min_kyc_tier,
                "travel_rule_threshold_usd_cents": self.travel_rule_threshold_usd_cents}


@dataclass(frozen=True, slots=True)
class JurisdictionRules:
    """A validated document: its id and version, the default rule and each jurisdiction's rule."""

    document_id: str
    version: int
    default: JurisdictionRule
    entries: Mapping[str, JurisdictionRule]

    @property
    def label(self) -> str:
        return f"{self.document_id}@{self.version}"

    def rules_for(self, country: str | None) -> JurisdictionRule:
        """Return the rule of ``country`` (ISO alpha-2, any case); unknown or None: the default."""
        if country is None:
            return self.default
        return self.entries.get(country.strip().upper(), self.default)

    def blocked(self) -> frozenset[str]:
        """Return the codes of every blocked jurisdiction."""
        return frozenset(code for code, rule in self.entries.items() if rule.blocked)

    def trading_refusal(self, country: str | None, kyc_tier: int, product: str) -> str | None:
        """Return why a resident of ``country`` at ``kyc_tier`` may not trade ``product``, or None."""
        rule = self.rules_for(country)
        where = f"residents of {rule.code}"
        if rule.code == UNKNOWN_JURISDICTION:
            where = "residents of unknown jurisdiction"
        if rule.blocked:
            return f"{where} may not trade (blocked jurisdiction, {self.label})"
        if kyc_tier < rule.min_kyc_tier:
            return (f"{where} need KYC tier {rule.min_kyc_tier} to trade, the account has {kyc_tier} "
                    f"({self.label})")
        if product not in rule.products:
            allowed = ", ".join(p for p in PRODUCTS if p in rule.products) or "nothing"
            return f"{where} may not trade {product} products (allowed: {allowed}; {self.label})"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.document_id, "version": self.version, "default": self.default.to_json(),
                "jurisdictions": {code: rule.to_json() for code, rule in sorted(self.entries.items())}}


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JurisdictionRulesError(f"{path} was {str(value)[:20]}, must be an integer from {low} to {high}")
    return value


def _entry(raw: object, path: str, code: str, base: Mapping[str, Any] | None) -> JurisdictionRule:
    if not isinstance(raw, dict):
        raise JurisdictionRulesError(f"{path} must be an object")
    unknown = sorted(set(raw) - ENTRY_FIELDS)
    if unknown:
        raise JurisdictionRulesError(f"{path}.{unknown[0][:40]} is not a known field")
    if base is None:
        missing = sorted(ENTRY_FIELDS - set(raw))
        if missing:
            raise JurisdictionRulesError(f"{path}.{missing[0]} is required")
    merged: dict[str, Any] = {**(base or {}), **raw}
    blocked = merged["blocked"]
    if not isinstance(blocked, bool):
        raise JurisdictionRulesError(f"{path}.blocked must be true or false")
    products = merged["products"]
    if (not isinstance(products, list) or len(set(map(str, products))) != len(products)
            or any(p not in PRODUCTS for p in products)):
        raise JurisdictionRulesError(
            f"{path}.products must be a list of distinct values of {', '.join(PRODUCTS)}")
    return JurisdictionRule(
        code=code, blocked=blocked, products=frozenset(products),
        max_leverage=_int(merged["max_leverage"], f"{path}.max_leverage", 1, MAX_LEVERAGE),
        min_kyc_tier=_int(merged["min_kyc_tier"], f"{path}.min_kyc_tier", 1, MAX_KYC_TIER),
        travel_rule_threshold_usd_cents=_int(merged["travel_rule_threshold_usd_cents"],
                                             f"{path}.travel_rule_threshold_usd_cents", 0,
                                             MAX_THRESHOLD_USD_CENTS))


def parse_jurisdiction_rules(raw: object) -> JurisdictionRules:
    """Validate a decoded document; refuse (JurisdictionRulesError naming the path) anything off."""
    if not isinstance(raw, dict):
        raise JurisdictionRulesError("document must be an object")
    if set(raw) != {"id", "version", "default", "jurisdictions"}:
        extra = sorted(set(raw) - {"id", "version", "default", "jurisdictions"})
        raise JurisdictionRulesError(f"{extra[0][:40]} is not a known field" if extra else
                                     "document needs exactly id, version, default, jurisdictions")
    doc_id = raw["id"]
    if not isinstance(doc_id, str) or not 1 <= len(doc_id) <= 64 or not doc_id.isprintable():
        raise JurisdictionRulesError("id must be 1..64 printable characters")
    version = _int(raw["version"], "version", 1, 2**31 - 1)
    default = _entry(raw["default"], "default", UNKNOWN_JURISDICTION, None)
    if default.blocked:
        raise JurisdictionRulesError("default.blocked must be false (block jurisdictions by name)")
    base = {"blocked": False, "products": sorted(default.products), "max_leverage": default.max_leverage,
            "min_kyc_tier": default.min_kyc_tier,
            "travel_rule_threshold_usd_cents": default.travel_rule_threshold_usd_cents}
    entries_raw = raw["jurisdictions"]
    if not isinstance(entries_raw, dict) or len(entries_raw) > MAX_JURISDICTIONS:
        raise JurisdictionRulesError(
            f"jurisdictions must be an object of at most {MAX_JURISDICTIONS} entries")
    entries: dict[str, JurisdictionRule] = {}
    for code, entry in entries_raw.items():
        if len(code) != 2 or not code.isascii() or not code.isalpha() or not code.isupper():
            raise JurisdictionRulesError(
                f"jurisdictions.{code[:8]!r} must be an upper-case ISO 3166-1 alpha-2 code")
        entries[code] = _entry(entry, f"jurisdictions.{code}", code, base)
    return JurisdictionRules(doc_id, version, default, entries)


def parse_jurisdiction_json(text: str) -> JurisdictionRules:
    """Parse and validate a JSON document."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JurisdictionRulesError(f"document is not JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_jurisdiction_rules(raw)


def default_jurisdiction_rules() -> JurisdictionRules:
    """Return the shipped document (policies/data/default_jurisdictions.json)."""
    text = resources.files("policies").joinpath("data/default_jurisdictions.json").read_text()
    return parse_jurisdiction_json(text)
