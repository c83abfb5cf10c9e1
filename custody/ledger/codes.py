"""Result codes of the ledger (the 40xx block of the custody range)."""

from __future__ import annotations

from enum import IntEnum


class LedgerCode(IntEnum):
    """Why the ledger refused a request. Names are the stable API ``error`` strings."""

    UNKNOWN_ACCOUNT = 4001
    ASSET_MISMATCH = 4002
    INSUFFICIENT_FUNDS = 4003
    CREDITS_EXCEED_DEBITS = 4004
    INVALID_AMOUNT = 4005
    SAME_ACCOUNT = 4006
    TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS = 4007
    PENDING_TRANSFER_NOT_FOUND = 4008
    PENDING_TRANSFER_ALREADY_POSTED = 4009
    PENDING_TRANSFER_ALREADY_VOIDED = 4010
    PENDING_TRANSFER_EXPIRED = 4011
    POST_AMOUNT_EXCEEDS_PENDING = 4012
    INVALID_TRANSFER_ID = 4013
    UNKNOWN_ASSET = 4014
    ACCOUNT_EXISTS = 4015
    LINKED_TRANSFER_FAILED = 4016
    BATCH_TOO_LARGE = 4017
    INVALID_ACCOUNT_KIND = 4018
    INVALID_FLAGS = 4019
    DUPLICATE_ID_IN_BATCH = 4020
    INVALID_TIMEOUT = 4021
    NOT_A_PENDING_TRANSFER = 4022
    INVALID_FIELD = 4023
    TRANSFER_NOT_FOUND = 4024
    INVALID_OWNER = 4025
    BATCH_EMPTY = 4026
    INVALID_CURSOR = 4027
    INVALID_ACTOR = 4028

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


class LedgerError(Exception):
    """An expected refusal by the ledger: a code and a message that says what was wrong."""

    def __init__(self, code: LedgerCode, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.index = index

    def __repr__(self) -> str:
        return f"LedgerError({self.code.error}, {self.message!r})"
