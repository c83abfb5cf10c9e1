"""Parse and validate withdrawal policy JSON into a `PolicyDocument`.

Every error raises `PolicyError(policy_document_invalid)` with the path of
the offending field first, e.g.
"rules[2].when.amount_usd_cents_gte must be a non-negative integer, was -5".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import NoReturn, TypeVar

from policies.identifier import is_identifier
from policies.policy_document import (
    MAX_DELAY_S,
    MAX_KYC_TIER,
    MAX_POLICY_BYTES,
    MAX_RULES,
    MAX_TIMELOCK_S,
    POLICY_SCHEMA,
    Action,
    Allow,
    Block,
    Conditions,
    Delay,
    DestinationStatus,
    PolicyDocument,
    RequireApprovals,
    Rule,
    TimeOfDayWindow,
    VelocityLimit,
    VelocityMetric,
    WalletTemperature,
)
from policies.quorum import MAX_REQUIRED_APPROVALS, QuorumRequirement
from policies.results import PolicyError, ResultCode
from policies.roles import Role
from policies.velocity import MAX_VELOCITY_WINDOW_S, VelocityScope, VelocityWindow
from policies.wire_format import MAX_U64, MAX_U256

MAX_DESCRIPTION_CHARS = 500
MAX_REASON_CHARS = 200
MAX_VELOCITY_LIMITS_PER_RULE = 8
MAX_SET_VALUES = 64
_SHOWN_VALUE_CHARS = 60

_T = TypeVar("_T")
JsonObject = dict[str, object]

_CONDITION_FIELDS = frozenset(
    {
        "asset_in",
        "amount_minor_gte",
        "amount_minor_lt",
        "amount_usd_cents_gte",
        "amount_usd_cents_lt",
        "destination_in",
        "source_wallet_in",
        "initiator_role_in",
        "kyc_tier_in",
        "velocity",
        "time_of_day_utc",
    }
)


def parse_policy_json(text: str | bytes) -> PolicyDocument:
    """Parse and validate a policy document; raise `PolicyError` naming the bad field."""
    return parse_policy_object(_load_json(text))


def parse_policy_object(raw: object) -> PolicyDocument:
    """Validate an already-decoded JSON value (e.g. loaded from YAML) as a policy."""
    doc = _object(
        raw,
        "document",
        {"schema", "id", "version", "destination_timelock_s", "rules"},
        {"description"},
    )
    if doc["schema"] != POLICY_SCHEMA:
        _fail("schema", f"must be {POLICY_SCHEMA!r}, was {_show(doc['schema'])}")
    rules = _list(doc["rules"], "rules", 1, MAX_RULES)
    parsed = tuple(_rule(value, f"rules[{i}]") for i, value in enumerate(rules))
    _check_rule_ids(parsed)
    if not parsed[-1].when.is_empty:
        _fail(
            f"rules[{len(parsed) - 1}].when",
            "must be empty in the last rule, so that every request is decided",
        )
    return PolicyDocument(
        policy_id=_identifier(doc["id"], "id"),
        version=_int(doc["version"], "version", 1, MAX_U64),
        destination_timelock_s=_int(
            doc["destination_timelock_s"], "destination_timelock_s", 0, MAX_TIMELOCK_S
        ),
        rules=parsed,
        description=_text(doc.get("description", ""), "description", 0, MAX_DESCRIPTION_CHARS),
    )


def _load_json(text: str | bytes) -> object:
    if len(text) > MAX_POLICY_BYTES:
        _fail("document", f"is {len(text)} bytes, at most {MAX_POLICY_BYTES} allowed")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail("document", f"is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except json.JSONDecodeError as exc:
        _fail("document", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> JsonObject:
    out: JsonObject = {}
    for key, value in pairs:
        if key in out:
            _fail("document", f"has duplicate key {key!r}")
        out[key] = value
    return out


def _reject_float(literal: str) -> NoReturn:
    # Money and limits are integers; a float in a policy is always a mistake.
    _fail("document", f"contains the non-integer number {literal}; use integer minor units")


def _check_rule_ids(rules: tuple[Rule, ...]) -> None:
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.rule_id in seen:
            _fail(f"rules[{index}].id", f"{rule.rule_id!r} is used by an earlier rule")
        seen.add(rule.rule_id)


def _rule(raw: object, path: str) -> Rule:
    obj = _object(raw, path, {"id", "when", "action"}, {"description"})
    return Rule(
        rule_id=_identifier(obj["id"], f"{path}.id"),
        when=_conditions(obj["when"], f"{path}.when"),
        action=_action(obj["action"], f"{path}.action"),
        description=_text(obj.get("description", ""), f"{path}.description", 0, MAX_DESCRIPTION_CHARS),
    )


def _conditions(raw: object, path: str) -> Conditions:
    obj = _object(raw, path, set(), _CONDITION_FIELDS)

    def amount(name: str) -> int | None:
        return _optional(obj, name, path, lambda v, p: _int(v, p, 0, MAX_U256))

    conditions = Conditions(
        asset_in=_optional_set(obj, "asset_in", path, _identifier),
        amount_minor_gte=amount("amount_minor_gte"),
        amount_minor_lt=amount("amount_minor_lt"),
        amount_usd_cents_gte=amount("amount_usd_cents_gte"),
        amount_usd_cents_lt=amount("amount_usd_cents_lt"),
        destination_in=_optional_set(obj, "destination_in", path, _enum(DestinationStatus)),
        source_wallet_in=_optional_set(obj, "source_wallet_in", path, _enum(WalletTemperature)),
        initiator_role_in=_optional_set(obj, "initiator_role_in", path, _enum(Role)),
        kyc_tier_in=_optional_set(obj, "kyc_tier_in", path, lambda v, p: _int(v, p, 0, MAX_KYC_TIER)),
        velocity=_velocity_limits(obj.get("velocity"), f"{path}.velocity"),
        time_of_day_utc=_optional(obj, "time_of_day_utc", path, _time_of_day),
    )
    _check_condition_consistency(conditions, path)
    return conditions


def _check_condition_consistency(when: Conditions, path: str) -> None:
    single_asset = when.asset_in is not None and len(when.asset_in) == 1
    for name in ("amount_minor_gte", "amount_minor_lt"):
        if getattr(when, name) is not None and not single_asset:
            _fail(
                f"{path}.{name}",
                "needs asset_in with exactly one asset, because minor units differ between assets",
            )
    for index, limit in enumerate(when.velocity):
        if limit.metric is VelocityMetric.TOTAL_MINOR_GT and not (
            single_asset and limit.window.scope.per_asset
        ):
            _fail(
                f"{path}.velocity[{index}].total_minor_gt",
                "needs a per-asset scope and asset_in with exactly one asset",
            )
    for unit in ("minor", "usd_cents"):
        low, high = getattr(when, f"amount_{unit}_gte"), getattr(when, f"amount_{unit}_lt")
        if low is not None and high is not None and low >= high:
            _fail(
                f"{path}.amount_{unit}_gte",
                f"was {low}, must be less than amount_{unit}_lt {high} or the rule never matches",
            )


def _velocity_limits(raw: object, path: str) -> tuple[VelocityLimit, ...]:
    if raw is None:
        return ()
    items = _list(raw, path, 1, MAX_VELOCITY_LIMITS_PER_RULE)
    return tuple(_velocity_limit(item, f"{path}[{i}]") for i, item in enumerate(items))


def _velocity_limit(raw: object, path: str) -> VelocityLimit:
    metrics = {m.value for m in VelocityMetric}
    obj = _object(raw, path, {"scope", "window_s"}, metrics)
    present = sorted(metrics & obj.keys())
    if len(present) != 1:
        _fail(path, f"must have exactly one of {', '.join(sorted(metrics))}, had {present}")
    metric = VelocityMetric(present[0])
    window = VelocityWindow(
        scope=_enum(VelocityScope)(obj["scope"], f"{path}.scope"),
        window_s=_int(obj["window_s"], f"{path}.window_s", 1, MAX_VELOCITY_WINDOW_S),
    )
    threshold = _int(obj[metric.value], f"{path}.{metric.value}", 0, MAX_U256)
    return VelocityLimit(window, metric, threshold)


def _time_of_day(raw: object, path: str) -> TimeOfDayWindow:
    obj = _object(raw, path, {"from", "to"}, set())
    window = TimeOfDayWindow(_minute(obj["from"], f"{path}.from"), _minute(obj["to"], f"{path}.to"))
    if window.from_minute == window.to_minute:
        _fail(path, "from and to must differ (an empty window never matches)")
    return window


def _minute(raw: object, path: str) -> int:
    text = raw if isinstance(raw, str) else ""
    hours, sep, minutes = text.partition(":")
    ok = sep and len(hours) == len(minutes) == 2 and (hours + minutes).isdigit()
    if not ok or int(hours) > 23 or int(minutes) > 59:
        _fail(path, f'must be a UTC time "HH:MM" from 00:00 to 23:59, was {_show(raw)}')
    return int(hours) * 60 + int(minutes)


def _action(raw: object, path: str) -> Action:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "allow":
        _object(raw, path, {"type"}, set())
        return Allow()
    if kind == "require_approvals":
        obj = _object(raw, path, {"type", "count", "group"}, set())
        count = _int(obj["count"], f"{path}.count", 1, MAX_REQUIRED_APPROVALS)
        return RequireApprovals(QuorumRequirement(count, _identifier(obj["group"], f"{path}.group")))
    if kind == "delay":
        obj = _object(raw, path, {"type", "seconds", "cancellable"}, set())
        if not isinstance(obj["cancellable"], bool):
            _fail(f"{path}.cancellable", f"must be true or false, was {_show(obj['cancellable'])}")
        return Delay(_int(obj["seconds"], f"{path}.seconds", 1, MAX_DELAY_S), obj["cancellable"])
    if kind == "block":
        obj = _object(raw, path, {"type", "reason"}, set())
        return Block(_text(obj["reason"], f"{path}.reason", 1, MAX_REASON_CHARS))
    _object(raw, path, {"type"}, {"count", "group", "seconds", "cancellable", "reason"})
    _fail(f"{path}.type", f"must be one of allow, require_approvals, delay, block, was {_show(kind)}")


# Field readers. Each takes the raw value and its path and returns a typed
# value or raises with the path first in the message.


def _fail(path: str, message: str) -> NoReturn:
    raise PolicyError(ResultCode.POLICY_DOCUMENT_INVALID, f"{path} {message}")


def _show(value: object) -> str:
    text = json.dumps(value, default=repr)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


def _object(raw: object, path: str, required: AbstractSet[str], optional: AbstractSet[str]) -> JsonObject:
    if not isinstance(raw, dict):
        _fail(path, f"must be an object, was {_show(raw)}")
    unknown = sorted(set(raw) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional)) or "none"
        _fail(path, f"has unknown field {unknown[0]!r}; allowed fields: {allowed}")
    missing = sorted(required - set(raw))
    if missing:
        _fail(f"{path}.{missing[0]}" if path != "document" else missing[0], "is required")
    return raw


def _int(raw: object, path: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        if low == 0 and high == MAX_U256:
            _fail(path, f"must be a non-negative integer, was {_show(raw)}")
        _fail(path, f"must be an integer from {low} to {high}, was {_show(raw)}")
    return raw


def _text(raw: object, path: str, min_chars: int, max_chars: int) -> str:
    if not isinstance(raw, str) or not min_chars <= len(raw) <= max_chars:
        _fail(path, f"must be a string of {min_chars} to {max_chars} characters, was {_show(raw)}")
    if not raw.isprintable():
        _fail(path, "must contain only printable characters")
    return raw


def _identifier(raw: object, path: str) -> str:
    if not isinstance(raw, str) or not is_identifier(raw):
        _fail(path, f"must be 1 to 128 printable ASCII characters without spaces, was {_show(raw)}")
    return raw


def _enum(kind: Callable[[str], _T]) -> Callable[[object, str], _T]:
    def read(raw: object, path: str) -> _T:
        try:
            if isinstance(raw, str):
                return kind(raw)
        except ValueError:
            pass
        allowed = ", ".join(str(m) for m in kind)  # type: ignore[attr-defined]
        _fail(path, f"must be one of {allowed}, was {_show(raw)}")

    return read


def _list(raw: object, path: str, min_items: int, max_items: int) -> list[object]:
    if not isinstance(raw, list) or not min_items <= len(raw) <= max_items:
        _fail(path, f"must be a list of {min_items} to {max_items} items, was {_show(raw)}")
    return raw


def _optional(obj: JsonObject, name: str, path: str, read: Callable[[object, str], _T]) -> _T | None:
    return None if name not in obj else read(obj[name], f"{path}.{name}")


def _optional_set(
    obj: JsonObject, name: str, path: str, read: Callable[[object, str], _T]
) -> frozenset[_T] | None:
    if name not in obj:
        return None
    items = _list(obj[name], f"{path}.{name}", 1, MAX_SET_VALUES)
    values = [read(item, f"{path}.{name}[{i}]") for i, item in enumerate(items)]
    if len(set(values)) != len(values):
        _fail(f"{path}.{name}", f"lists a value twice: {_show(items)}")
    return frozenset(values)
