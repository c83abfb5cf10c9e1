"""Strict parsing of JSON request bodies and query strings at the API edge."""

from __future__ import annotations

from typing import Any

from flask import request

from custody.api.body import echo
from custody.api.errors import ApiError, RequestCode
from custody.money import AmountError, parse_amount

INT_FIELD_MAX = 2**63 - 1


def json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, or refuse with invalid_json."""
    if not request.is_json:
        raise ApiError(RequestCode.UNSUPPORTED_MEDIA_TYPE,
                       "request body must be JSON (Content-Type: application/json)", 415)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(RequestCode.INVALID_JSON, "request body must be a JSON object")
    return body


def reject_unknown(body: dict[str, Any], allowed: set[str], where: str = "body") -> None:
    """Refuse fields we do not know, so a typo never silently means something else."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        named = ", ".join(echo(name, 40) for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"{where} has unknown field(s) {named}; allowed: {', '.join(sorted(allowed))}")


def field_str(body: dict[str, Any], name: str, *, required: bool = True,
              default: str | None = None) -> str | None:
    """Return a string field."""
    value = body.get(name, default)
    if value is None:
        if required:
            raise ApiError(RequestCode.INVALID_FIELD, f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(RequestCode.INVALID_FIELD, f"{name} was {echo(value)}, must be a string")
    return value


def field_int(body: dict[str, Any], name: str, *, required: bool = True,
              default: int | None = None) -> int | None:
    """Return an integer field (JSON number without fraction, not a bool)."""
    value = body.get(name, default)
    if value is None:
        if required:
            raise ApiError(RequestCode.INVALID_FIELD, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT_FIELD_MAX:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"{name} was {echo(value)}, must be a non-negative integer")
    return value


def field_amount(body: dict[str, Any], name: str = "amount", *,
                 required: bool = True) -> int | None:
    """Return an amount in minor units: an integer or a string of digits, never a float."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(RequestCode.INVALID_FIELD, f"{name} is required")
        return None
    try:
        return parse_amount(value, field=name)
    except AmountError as exc:
        raise ApiError(RequestCode.INVALID_FIELD, str(exc)) from None


def field_bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """Return a boolean field."""
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(RequestCode.INVALID_FIELD, f"{name} was {echo(value)}, must be true or false")
    return value


def query_int(name: str, default: int, *, low: int, high: int) -> int:
    """Return an integer query parameter within [low, high]."""
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(RequestCode.INVALID_FIELD,
                       f"query parameter {name} was {text[:40]!r}, must be an integer {low}..{high}")
    return int(text)
