"""Result codes of the access layer (the 11xx block of the auth range) and the
exception that carries them, shared with the withdrawal service.

The codes of `policies.results.ResultCode` (10xx auth, 50xx policy) are used as
they are; these add what only the persistence and API layers can refuse.
"""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class AccessCode(IntEnum):
    """Stable refusals of users, keys, MFA enrolment, approver keys and idempotency."""

    USER_EXISTS = 1101
    USER_UNKNOWN = 1102
    USER_DISABLED = 1103
    USERNAME_INVALID = 1104
    MFA_ALREADY_ENROLLED = 1105
    MFA_NOT_PENDING = 1106
    API_KEY_NOT_FOUND = 1107
    SCOPE_ESCALATION = 1108
    APPROVER_KEY_EXISTS = 1109
    APPROVER_KEY_NOT_FOUND = 1110
    APPROVER_KEY_INVALID = 1111
    IDEMPOTENCY_KEY_REUSED = 1112
    IDEMPOTENCY_KEY_INVALID = 1113
    IDEMPOTENCY_KEY_REQUIRED = 1114
    IDEMPOTENCY_KEY_IN_PROGRESS = 1115
    PROPOSAL_NOT_FOUND = 1120
    PROPOSAL_CLOSED = 1121
    KYC_TIER_INVALID = 1122
    APPROVER_MISMATCH = 1123
    PROPOSAL_INVALID = 1124
    FREEZE_COMPLIANCE_OWNED = 1125
    FREEZE_LIFT_NOT_REQUESTED = 1126

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


ACCESS_STATUS: dict[AccessCode, int] = {
    AccessCode.USER_EXISTS: 409,
    AccessCode.USER_UNKNOWN: 404,
    AccessCode.USER_DISABLED: 401,
    AccessCode.MFA_ALREADY_ENROLLED: 409,
    AccessCode.MFA_NOT_PENDING: 409,
    AccessCode.API_KEY_NOT_FOUND: 404,
    AccessCode.SCOPE_ESCALATION: 403,
    AccessCode.APPROVER_KEY_EXISTS: 409,
    AccessCode.APPROVER_KEY_NOT_FOUND: 404,
    AccessCode.IDEMPOTENCY_KEY_REUSED: 422,
    AccessCode.IDEMPOTENCY_KEY_IN_PROGRESS: 409,
    AccessCode.PROPOSAL_NOT_FOUND: 404,
    AccessCode.PROPOSAL_CLOSED: 409,
    AccessCode.APPROVER_MISMATCH: 403,
    AccessCode.FREEZE_COMPLIANCE_OWNED: 409,
    AccessCode.FREEZE_LIFT_NOT_REQUESTED: 409,
}


class AccessError(CustodyRefusal):
    """A refusal by the access layer."""

    def __init__(self, code: AccessCode, message: str) -> None:
        super().__init__(code, message, ACCESS_STATUS.get(code, 400))
