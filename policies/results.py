"""Result codes of the policy and authentication subsystem.

One enum, numeric ranges per area: 1xxx authentication and authorization,
5xxx withdrawal policy, approvals and policy governance. The snake_case
`error` string of each code is part of the public API and never changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@enum.unique
class ResultCode(enum.IntEnum):
    """Stable codes for every expected refusal in policies/."""

    # 10xx: the signed request itself.
    AUTH_HEADERS_MALFORMED = 1001
    SIGNATURE_INVALID = 1002
    TIMESTAMP_STALE = 1003
    TIMESTAMP_IN_FUTURE = 1004
    REQUEST_REPLAYED = 1005
    # 101x: the API key the request claims.
    API_KEY_UNKNOWN = 1010
    API_KEY_EXPIRED = 1011
    API_KEY_REVOKED = 1012
    IP_NOT_ALLOWED = 1013
    SCOPE_MISSING = 1014
    API_KEY_INVALID = 1015
    # 102x: second factor.
    MFA_REQUIRED = 1020
    MFA_INVALID = 1021
    MFA_LOCKED_OUT = 1022
    MFA_CODE_REUSED = 1023
    MFA_NOT_ENROLLED = 1024
    # 103x: roles and permissions.
    PERMISSION_DENIED = 1030
    ROLE_UNKNOWN = 1031

    # 500x: policy documents and decisions.
    POLICY_DOCUMENT_INVALID = 5001
    POLICY_CONTEXT_INVALID = 5002
    POLICY_PRICE_MISSING = 5003
    POLICY_VELOCITY_MISSING = 5004
    POLICY_BLOCKED = 5005
    POLICY_DELAY_PENDING = 5006
    POLICY_VERSION_MISMATCH = 5007
    POLICY_CHANGE_INVALID = 5008
    # 502x: approvals and quorums.
    APPROVALS_INSUFFICIENT = 5020
    APPROVER_UNKNOWN = 5021
    APPROVER_KEY_REVOKED = 5022
    APPROVER_NOT_IN_GROUP = 5023
    APPROVER_DUPLICATE = 5024
    APPROVAL_SELF = 5025
    APPROVAL_EXPIRED = 5026
    APPROVAL_TOO_OLD = 5027
    APPROVAL_NOT_YET_VALID = 5028
    APPROVAL_SIGNATURE_INVALID = 5029
    APPROVAL_DIGEST_MISMATCH = 5030
    APPROVAL_SCHEME_UNSUPPORTED = 5031
    APPROVAL_MALFORMED = 5032
    APPROVALS_TOO_MANY = 5033
    APPROVER_REGISTRY_INVALID = 5034
    APPROVAL_OUTDATED = 5035

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API `error` string."""
        return self.name.lower()

    @property
    def http_status(self) -> int:
        """Return the HTTP status the API layer should answer with."""
        return _HTTP_STATUS.get(self, _DEFAULT_HTTP_STATUS[self.value // 1000])


# Authentication failures are 401 by default and policy refusals 422; the
# exceptions below are the codes where a different status tells the client
# more (authorization refused, locked out, or "not yet").
_DEFAULT_HTTP_STATUS = {1: 401, 5: 422}
_HTTP_STATUS: dict[ResultCode, int] = {
    # Bad parameters for a new key (scopes, allowlist, an expiry in the past) are a bad request,
    # not a failed authentication: the caller's own key authenticated fine.
    ResultCode.API_KEY_INVALID: 400,
    ResultCode.IP_NOT_ALLOWED: 403,
    ResultCode.SCOPE_MISSING: 403,
    ResultCode.PERMISSION_DENIED: 403,
    ResultCode.ROLE_UNKNOWN: 403,
    ResultCode.MFA_LOCKED_OUT: 429,
    ResultCode.MFA_NOT_ENROLLED: 403,
    ResultCode.POLICY_BLOCKED: 403,
    ResultCode.POLICY_DELAY_PENDING: 409,
    ResultCode.POLICY_VERSION_MISMATCH: 409,
    ResultCode.APPROVALS_INSUFFICIENT: 409,
    ResultCode.POLICY_PRICE_MISSING: 503,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """An expected refusal: a stable code and a message for humans."""

    code: ResultCode
    message: str

    def to_json(self) -> dict[str, object]:
        """Return the API error body `{code, error, message}`."""
        return {"code": int(self.code), "error": self.code.error, "message": self.message}


class PolicyError(Exception):
    """Raised for invalid input to policies/ (bad documents, bad values).

    It carries the same code and message as a `Refusal`, so the API layer maps
    both to one JSON error body.
    """

    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(f"{code.error}: {message}")
        self.code = code
        self.message = message

    @property
    def refusal(self) -> Refusal:
        """Return this error as a `Refusal` value."""
        return Refusal(self.code, self.message)
