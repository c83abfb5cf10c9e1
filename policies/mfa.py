"""TOTP second factor (RFC 6238, via pyotp) as a pure state machine.

The caller stores a `TotpState` per user and passes it in with the current
time; `verify_totp` returns the outcome and the next state to store. Codes
are accepted one 30-second step either side of now, a step that was already
used is refused (a code seen over a shoulder cannot be replayed), and after
`MAX_CONSECUTIVE_FAILURES` failures the user is locked out for a while.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace

import pyotp

from policies.results import Refusal, ResultCode

TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_WINDOW_STEPS = 1
SECRET_BASE32_CHARS = 32  # 160 bits, the RFC 4226 recommended length.
MAX_CONSECUTIVE_FAILURES = 5
LOCKOUT_MS = 15 * 60 * 1000
DEFAULT_ISSUER = "Strongroom"
MS_PER_S = 1000


@dataclass(frozen=True, slots=True)
class TotpState:
    """What must be remembered per user between verifications."""

    last_used_step: int | None = None
    consecutive_failures: int = 0
    locked_until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A new secret and the otpauth:// URI to show as a QR code, once."""

    secret_base32: str
    provisioning_uri: str


@dataclass(frozen=True, slots=True)
class TotpVerification:
    """Outcome of one attempt: `refusal` None means accepted; store `state` either way."""

    refusal: Refusal | None
    state: TotpState

    @property
    def ok(self) -> bool:
        return self.refusal is None


def new_totp_enrolment(
    account_name: str, issuer: str = DEFAULT_ISSUER, secret_base32: str | None = None
) -> TotpEnrolment:
    """Create a TOTP secret for `account_name` (pass `secret_base32` only in tests)."""
    secret = secret_base32 or pyotp.random_base32(SECRET_BASE32_CHARS)
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    uri = totp.provisioning_uri(name=account_name, issuer_name=issuer)
    return TotpEnrolment(secret, uri)


def totp_code(secret_base32: str, now_ms: int) -> str:
    """Return the code an authenticator shows at `now_ms` (for tests and tools)."""
    return _totp(secret_base32).generate_otp(_step(now_ms))


def verify_totp(secret_base32: str, code: str, state: TotpState, now_ms: int) -> TotpVerification:
    """Check `code` at `now_ms` against `secret_base32`, given and returning state."""
    if state.locked_until_ms is not None:
        if now_ms < state.locked_until_ms:
            return TotpVerification(
                Refusal(
                    ResultCode.MFA_LOCKED_OUT,
                    f"too many failed codes; locked until {state.locked_until_ms} ms",
                ),
                state,
            )
        state = replace(state, consecutive_failures=0, locked_until_ms=None)
    step = _matching_step(secret_base32, code, now_ms)
    if step is None:
        return _failure(state, now_ms, ResultCode.MFA_INVALID, "code is not valid now")
    if state.last_used_step is not None and step <= state.last_used_step:
        return _failure(state, now_ms, ResultCode.MFA_CODE_REUSED, "code was already used")
    return TotpVerification(None, TotpState(last_used_step=step))


def _matching_step(secret_base32: str, code: str, now_ms: int) -> int | None:
    """Return the time step within the window whose code equals `code`, if any."""
    candidate = code.replace(" ", "")
    if len(candidate) != TOTP_DIGITS or not (candidate.isascii() and candidate.isdigit()):
        return None
    totp = _totp(secret_base32)
    now_step = _step(now_ms)
    matched: int | None = None
    # Compare against every step in the window without stopping early, so the
    # time taken does not reveal which step (if any) matched.
    for offset in range(-TOTP_WINDOW_STEPS, TOTP_WINDOW_STEPS + 1):
        step = now_step + offset
        if step >= 0 and hmac.compare_digest(totp.generate_otp(step), candidate):
            matched = step
    return matched


def _failure(state: TotpState, now_ms: int, code: ResultCode, message: str) -> TotpVerification:
    failures = state.consecutive_failures + 1
    if failures >= MAX_CONSECUTIVE_FAILURES:
        locked_until_ms = now_ms + LOCKOUT_MS
        next_state = replace(state, consecutive_failures=failures, locked_until_ms=locked_until_ms)
        message = f"{message}; {failures} failures, locked until {locked_until_ms} ms"
        return TotpVerification(Refusal(ResultCode.MFA_LOCKED_OUT, message), next_state)
    return TotpVerification(Refusal(code, message), replace(state, consecutive_failures=failures))


def _totp(secret_base32: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret_base32, digits=TOTP_DIGITS, interval=TOTP_STEP_S)


def _step(now_ms: int) -> int:
    return now_ms // (TOTP_STEP_S * MS_PER_S)
