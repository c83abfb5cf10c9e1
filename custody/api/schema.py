"""Request-body schemas attached to views, for the OpenAPI document.

The views still parse strictly by hand (custody.api.request); the schema
tells clients (and schemathesis) what a valid body looks like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def accepts(schema: dict[str, Any]) -> Callable[[F], F]:
    """Attach the JSON schema of the request body to a view."""

    def decorate(view: F) -> F:
        view.request_schema = schema  # type: ignore[attr-defined]
        return view

    return decorate
