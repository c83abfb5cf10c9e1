from __future__ import annotations

import re

from policies.results import PolicyError, Refusal, ResultCode


def test_result_codes_fall_in_subsystem_ranges() -> None:
    for code in ResultCode:
        area = code.value // 1000
        prefix_ok = area == 1 or area == 5
        assert prefix_ok, code


def test_result_code_error_strings_are_unique_snake_case() -> None:
    errors = [code.error for code in ResultCode]
    assert len(set(errors)) == len(errors)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", e) for e in errors)


def test_result_code_values_are_stable() -> None:
    # These numbers are part of the public API; changing one breaks clients.
    assert ResultCode.SIGNATURE_INVALID == 1002
    assert ResultCode.REQUEST_REPLAYED == 1005
    assert ResultCode.MFA_LOCKED_OUT == 1022
    assert ResultCode.PERMISSION_DENIED == 1030
    assert ResultCode.POLICY_BLOCKED == 5005
    assert ResultCode.APPROVALS_INSUFFICIENT == 5020
    assert ResultCode.APPROVAL_DIGEST_MISMATCH == 5030


def test_refusal_json_body_has_code_error_message() -> None:
    refusal = Refusal(ResultCode.SCOPE_MISSING, "needs trade")
    assert refusal.to_json() == {"code": 1014, "error": "scope_missing", "message": "needs trade"}


def test_policy_error_carries_refusal() -> None:
    error = PolicyError(ResultCode.POLICY_CONTEXT_INVALID, "amount_minor was -5, must be positive")
    assert error.refusal == Refusal(ResultCode.POLICY_CONTEXT_INVALID, error.message)
    assert str(error).startswith("policy_context_invalid: amount_minor was -5")


def test_result_code_http_status_distinguishes_authn_from_authz() -> None:
    assert ResultCode.SIGNATURE_INVALID.http_status == 401
    assert ResultCode.PERMISSION_DENIED.http_status == 403
    assert ResultCode.MFA_LOCKED_OUT.http_status == 429
    assert ResultCode.POLICY_DOCUMENT_INVALID.http_status == 422
    assert all(c.http_status in {400, 401, 403, 409, 422, 429, 503} for c in ResultCode)
