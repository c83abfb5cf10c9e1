"""Result codes of personal settings, alerts and webhooks (the 60xx block) and their exception.

60xx personal settings, 61xx alert rules, 62xx webhook destinations and deliveries.
"""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class ConsoleCode(IntEnum):
    """Stable refusals of a person's settings, alerts and webhook endpoint."""

    SETTINGS_INVALID = 6001
    SETTINGS_FIELD_UNKNOWN = 6002
    ALERT_INVALID = 6101
    ALERT_NOT_FOUND = 6102
    ALERT_LIMIT_REACHED = 6103
    WEBHOOK_URL_INVALID = 6201
    WEBHOOK_DESTINATION_REFUSED = 6202
    WEBHOOK_NOT_CONFIGURED = 6203

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


CONSOLE_STATUS: dict[ConsoleCode, int] = {
    ConsoleCode.ALERT_NOT_FOUND: 404,
    ConsoleCode.ALERT_LIMIT_REACHED: 409,
    ConsoleCode.WEBHOOK_DESTINATION_REFUSED: 422,
    ConsoleCode.WEBHOOK_NOT_CONFIGURED: 404,
}


class ConsoleError(CustodyRefusal):
    """A refusal about a person's settings, alerts or webhook."""

    def __init__(self, code: ConsoleCode, message: str) -> None:
        super().__init__(code, message, CONSOLE_STATUS.get(code, 400))
