from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pyotp
from hypothesis import given
from hypothesis import strategies as st

from policies.mfa import (
    LOCKOUT_MS,
    MAX_CONSECUTIVE_FAILURES,
    TotpState,
    new_totp_enrolment,
    totp_code,
    verify_totp,
)
from policies.results import ResultCode

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW_MS = 1_750_000_005_000  # 5 s into a 30 s step.
STEP_MS = 30_000


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def test_mfa_enrolment_gives_random_secret_and_uri() -> None:
    first = new_totp_enrolment("alice@example.com")
    second = new_totp_enrolment("alice@example.com")
    assert first.secret_base32 != second.secret_base32
    assert len(first.secret_base32) == 32
    uri = urlparse(first.provisioning_uri)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert parse_qs(uri.query)["secret"] == [first.secret_base32]
    assert parse_qs(uri.query)["issuer"] == ["Strongroom"]


def test_mfa_code_matches_pyotp_reference() -> None:
    assert totp_code(SECRET, NOW_MS) == pyotp.TOTP(SECRET).at(NOW_MS // 1000)


def test_mfa_current_code_accepted_and_step_recorded() -> None:
    result = verify_totp(SECRET, totp_code(SECRET, NOW_MS), TotpState(), NOW_MS)
    assert result.ok
    assert result.state.last_used_step == NOW_MS // STEP_MS


def test_mfa_code_with_spaces_accepted() -> None:
    code = totp_code(SECRET, NOW_MS)
    assert verify_totp(SECRET, f"{code[:3]} {code[3:]}", TotpState(), NOW_MS).ok


def test_mfa_previous_and_next_step_accepted() -> None:
    assert verify_totp(SECRET, totp_code(SECRET, NOW_MS - STEP_MS), TotpState(), NOW_MS).ok
    assert verify_totp(SECRET, totp_code(SECRET, NOW_MS + STEP_MS), TotpState(), NOW_MS).ok


def test_mfa_code_two_steps_away_rejected() -> None:
    result = verify_totp(SECRET, totp_code(SECRET, NOW_MS - 2 * STEP_MS), TotpState(), NOW_MS)
    assert result.refusal is not None and result.refusal.code is ResultCode.MFA_INVALID
    assert result.state.consecutive_failures == 1


def test_mfa_same_code_reused_rejected() -> None:
    code = totp_code(SECRET, NOW_MS)
    first = verify_totp(SECRET, code, TotpState(), NOW_MS)
    again = verify_totp(SECRET, code, first.state, NOW_MS + 1_000)
    assert again.refusal is not None and again.refusal.code is ResultCode.MFA_CODE_REUSED


def test_mfa_older_step_after_newer_used_rejected() -> None:
    newer = verify_totp(SECRET, totp_code(SECRET, NOW_MS), TotpState(), NOW_MS)
    older = verify_totp(SECRET, totp_code(SECRET, NOW_MS - STEP_MS), newer.state, NOW_MS)
    assert older.refusal is not None and older.refusal.code is ResultCode.MFA_CODE_REUSED


def test_mfa_malformed_code_counts_as_failure() -> None:
    for code in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        result = verify_totp(SECRET, code, TotpState(), NOW_MS)
        assert result.refusal is not None and result.refusal.code is ResultCode.MFA_INVALID


def test_mfa_lockout_after_consecutive_failures() -> None:
    bad = wrong(totp_code(SECRET, NOW_MS))
    state = TotpState()
    for attempt in range(MAX_CONSECUTIVE_FAILURES):
        result = verify_totp(SECRET, bad, state, NOW_MS + attempt)
        state = result.state
    assert result.refusal is not None and result.refusal.code is ResultCode.MFA_LOCKED_OUT
    locked = verify_totp(SECRET, totp_code(SECRET, NOW_MS), state, NOW_MS + 10)
    assert locked.refusal is not None and locked.refusal.code is ResultCode.MFA_LOCKED_OUT
    assert locked.state == state  # Attempts while locked change nothing.


def test_mfa_lockout_ends_after_period() -> None:
    state = TotpState(consecutive_failures=MAX_CONSECUTIVE_FAILURES, locked_until_ms=NOW_MS)
    later = NOW_MS + LOCKOUT_MS
    result = verify_totp(SECRET, totp_code(SECRET, later), state, later)
    assert result.ok
    assert result.state == TotpState(last_used_step=later // STEP_MS)


def test_mfa_success_resets_failure_count() -> None:
    state = TotpState(consecutive_failures=MAX_CONSECUTIVE_FAILURES - 1)
    assert verify_totp(SECRET, totp_code(SECRET, NOW_MS), state, NOW_MS).state.consecutive_failures == 0


@given(st.integers(0, 2**40), st.text(max_size=10))
def test_mfa_failures_never_decrease_without_success(now_ms: int, code: str) -> None:
    state = TotpState(consecutive_failures=2)
    result = verify_totp(SECRET, code, state, now_ms)
    if not result.ok:
        assert result.state.consecutive_failures == 3
