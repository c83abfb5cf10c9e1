"""TOTP enrolment and verification with persisted state (policies.mfa does the checking).

The TOTP secret is keystore ciphertext; the verification state (last used
step, consecutive failures, lockout) is read and written under a row lock, so
two concurrent requests cannot both use one code.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.errors import AccessCode, AccessError
from custody.access.models import MfaRow, User
from custody.access.secret_box import SecretBox
from policies.mfa import TotpEnrolment, TotpState, new_totp_enrolment, verify_totp
from policies.results import Refusal, ResultCode

TOTP_PURPOSE = "totp"


class Mfa:
    """Enrol, confirm and verify TOTP codes per user."""

    def __init__(self, sessions: sessionmaker[Session], secrets: SecretBox, clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._clock = clock

    def enrol(self, username: str) -> TotpEnrolment:
        """Start (or restart, if unconfirmed) enrolment; the secret is shown once."""
        enrolment = new_totp_enrolment(username)
        sealed = self._secrets.seal(TOTP_PURPOSE, username, enrolment.secret_base32.encode("ascii"))
        now_ms = self._clock()
        with self._sessions.begin() as session:
            if session.get(User, username) is None:
                raise AccessError(AccessCode.USER_UNKNOWN, f"user {username} does not exist")
            row = session.get(MfaRow, username, with_for_update=True)
            if row is not None and row.confirmed_ms is not None:
                raise AccessError(
                    AccessCode.MFA_ALREADY_ENROLLED, f"{username} already has a confirmed authenticator"
                )
            if row is None:
                row = MfaRow(username=username, consecutive_failures=0)
                session.add(row)
            row.secret_ciphertext, row.created_ms, row.confirmed_ms = sealed, now_ms, None
            row.last_used_step, row.consecutive_failures, row.locked_until_ms = None, 0, None
            security_log.append(session, at_ms=now_ms, actor=username, action="mfa.enrol", subject=username)
        return enrolment

    def confirm(self, username: str, code: str) -> Refusal | None:
        """Confirm a pending enrolment with a first valid code."""
        return self._verify(username, code, confirming=True)

    def verify(self, username: str, code: str) -> Refusal | None:
        """Check a code for a confirmed enrolment; None means accepted."""
        return self._verify(username, code, confirming=False)

    def is_enrolled(self, username: str) -> bool:
        with self._sessions() as session:
            row = session.get(MfaRow, username)
            return row is not None and row.confirmed_ms is not None

    def _verify(self, username: str, code: str, *, confirming: bool) -> Refusal | None:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(MfaRow, username, with_for_update=True)
            if row is None or (row.confirmed_ms is None) != confirming:
                return _not_ready(username, row, confirming)
            secret = self._secrets.open(TOTP_PURPOSE, username, row.secret_ciphertext).decode("ascii")
            state = TotpState(row.last_used_step, row.consecutive_failures, row.locked_until_ms)
            outcome = verify_totp(secret, code, state, now_ms)
            row.last_used_step = outcome.state.last_used_step
            row.consecutive_failures = outcome.state.consecutive_failures
            row.locked_until_ms = outcome.state.locked_until_ms
            if outcome.ok and confirming:
                row.confirmed_ms = now_ms
            if confirming or not outcome.ok:
                action = "mfa.confirm" if confirming else "mfa.verify"
                refusal = outcome.refusal
                security_log.append(
                    session,
                    at_ms=now_ms,
                    actor=username,
                    action=action,
                    subject=username,
                    outcome="ok" if refusal is None else refusal.code.error,
                )
            return outcome.refusal


def _not_ready(username: str, row: MfaRow | None, confirming: bool) -> Refusal:
    if confirming and row is not None:
        raise AccessError(AccessCode.MFA_NOT_PENDING, f"{username} has no enrolment to confirm")
    if confirming:
        raise AccessError(AccessCode.MFA_NOT_PENDING, f"{username} has not started enrolment")
    return Refusal(ResultCode.MFA_NOT_ENROLLED, f"{username} has no confirmed authenticator; enrol first")
