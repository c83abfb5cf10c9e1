"""The refusal every custody service raises: a stable code, a message and an HTTP status.

A neutral module below every custody layer (docs/architecture.md); each service
subclasses it with its own code block (AccessError, WithdrawalError, ...).
"""

from __future__ import annotations

from enum import IntEnum


class CustodyRefusal(Exception):
    """An expected refusal by a custody service: a stable code, a message and an HTTP status."""

    def __init__(self, code: IntEnum, message: str, status: int = 400) -> None:
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.message = message
        self.status = status
