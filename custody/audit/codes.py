"""Result codes of the audit subsystem (the 47xx block of the custody range)."""

from __future__ import annotations

from enum import IntEnum


class AuditCode(IntEnum):
    """Why an audit operation was refused. Names are the stable API ``error`` strings."""

    NO_NEW_ENTRIES = 4701
    CHECKPOINT_NOT_FOUND = 4702
    CHECKPOINT_CONFLICT = 4703
    INVALID_TREE_SIZE = 4704
    ENTRY_NOT_FOUND = 4705
    SNAPSHOT_NOT_FOUND = 4706
    LIABILITY_NOT_FOUND = 4707
    CORRUPT_JOURNAL = 4708
    EXPORT_DIR_NOT_EMPTY = 4709
    INVALID_ARGUMENT = 4710

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


class AuditError(Exception):
    """An expected refusal by the audit subsystem: a code and a message saying what was wrong."""

    def __init__(self, code: AuditCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"AuditError({self.code.error}, {self.message!r})"
