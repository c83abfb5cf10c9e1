"""Console logins: argon2id passwords, TOTP, throttling and server-side sessions.

A login needs the password *and* a fresh TOTP code of the user's confirmed
authenticator (custody.access.mfa, the same state the API's step-up codes use:
a code is good once). Failed logins are throttled twice: per username (after
`MAX_FAILED_LOGINS` consecutive failures the account's console login is locked
for `LOGIN_LOCK_MS`) and per client address (`IpThrottle`). An unknown
username costs the same argon2 work as a known one, and every refusal has the
same message, so the answer does not tell which part was wrong.

Sessions live in the database under the SHA-256 of a random cookie token;
each request moves `last_seen_ms`, and a session idle for longer than the idle
timeout, or older than `SESSION_MAX_AGE_MS`, is deleted when next seen.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.mfa import Mfa
from custody.access.models import User
from custody.access.users import UserView, user_view
from strongroom.console.models import ConsoleCredential, ConsoleSession

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256
MAX_FAILED_LOGINS = 5
LOGIN_LOCK_MS = 15 * 60 * 1000
DEFAULT_IDLE_TIMEOUT_MS = 15 * 60 * 1000
SESSION_MAX_AGE_MS = 12 * 60 * 60 * 1000
TOKEN_BYTES = 32
LOGIN_REFUSED = "wrong username, password or code"
LOCKED = "too many failed logins: try again later"


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A session token (to set as the cookie) and the user, or why the login was refused."""

    token: str | None
    user: UserView | None
    refusal: str | None


class IpThrottle:
    """At most ``limit`` failed logins per client address within ``window_ms`` (in memory)."""

    MAX_TRACKED = 10_000

    def __init__(self, limit: int, window_ms: int) -> None:
        self._limit = limit
        self._window_ms = window_ms
        self._failures: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def blocked(self, ip: str, now_ms: int) -> bool:
        with self._lock:
            seen = self._failures.get(ip)
            if seen is None:
                return False
            while seen and seen[0] <= now_ms - self._window_ms:
                seen.popleft()
            return len(seen) >= self._limit

    def failed(self, ip: str, now_ms: int) -> None:
        with self._lock:
            if ip not in self._failures and len(self._failures) >= self.MAX_TRACKED:
                # Bounded memory: forget the oldest address rather than grow without limit.
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(ip, deque(maxlen=self._limit * 4)).append(now_ms)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def csrf_token(session_token: str) -> str:
    """Return the CSRF token of a session (an HMAC of its secret token, never stored)."""
    return hmac.new(session_token.encode("ascii", "replace"), b"strongroom.console.csrf",
                    hashlib.sha256).hexdigest()


class ConsoleAccounts:
    """Passwords, logins and sessions of the web console."""

    def __init__(self, sessions: sessionmaker[Session], mfa: Mfa, clock: Callable[[], int], *,
                 hasher: PasswordHasher | None = None, idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
                 ip_throttle: IpThrottle | None = None) -> None:
        self._sessions = sessions
        self._mfa = mfa
        self._clock = clock
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self.idle_timeout_ms = idle_timeout_ms
        self.ip_throttle = ip_throttle or IpThrottle(limit=20, window_ms=5 * 60 * 1000)
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    # -- passwords ---------------------------------------------------------------------------

    def set_password(self, username: str, password: str, *, actor: str) -> None:
        """Set (or replace) ``username``'s console password; clears a login lock."""
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise ValueError(f"password was {len(password)} characters, must be "
                             f"{MIN_PASSWORD_CHARS}..{MAX_PASSWORD_CHARS}")
        hashed = self._hasher.hash(password)
        now_ms = self._clock()
        with self._sessions.begin() as session:
            if session.get(User, username) is None:
                raise ValueError(f"user {username} does not exist")
            row = session.get(ConsoleCredential, username, with_for_update=True)
            if row is None:
                row = ConsoleCredential(username=username)
                session.add(row)
            row.password_hash, row.updated_ms = hashed, now_ms
            row.failed_logins, row.locked_until_ms = 0, None
            # A new password ends every session opened with the old one.
            session.execute(delete(ConsoleSession).where(ConsoleSession.username == username))
            security_log.append(session, at_ms=now_ms, actor=actor, action="console.password_set",
                                subject=username)

    # -- logins ------------------------------------------------------------------------------

    def login(self, username: str, password: str, code: str, ip: str) -> LoginResult:
        """Check password and TOTP code; open a session or say why not (always the same words)."""
        now_ms = self._clock()
        if self.ip_throttle.blocked(ip, now_ms):
            return LoginResult(None, None, LOCKED)
        username = username.strip().lower()[:64]
        with self._sessions.begin() as session:
            row = session.get(ConsoleCredential, username, with_for_update=True)
            user = session.get(User, username)
            if row is None or user is None:
                self._verify(self._dummy_hash, password)
                self.ip_throttle.failed(ip, now_ms)
                return LoginResult(None, None, LOGIN_REFUSED)
            if row.locked_until_ms is not None and now_ms < row.locked_until_ms:
                self.ip_throttle.failed(ip, now_ms)
                self._log(session, username, now_ms, "locked", ip)
                return LoginResult(None, None, LOCKED)
            password_ok = self._verify(row.password_hash, password)
            if password_ok and self._hasher.check_needs_rehash(row.password_hash):
                row.password_hash = self._hasher.hash(password)
            view = user_view(user)
        # The code is checked (and spent) only after the password: a guessed password alone
        # never burns the user's current code.
        code_ok = password_ok and view.disabled_ms is None and self._mfa.verify(username, code) is None
        with self._sessions.begin() as session:
            row = session.get(ConsoleCredential, username, with_for_update=True)
            assert row is not None
            if not code_ok:
                row.failed_logins += 1
                if row.failed_logins >= MAX_FAILED_LOGINS:
                    row.locked_until_ms, row.failed_logins = now_ms + LOGIN_LOCK_MS, 0
                self.ip_throttle.failed(ip, now_ms)
                self._log(session, username, now_ms, "refused", ip)
                return LoginResult(None, None, LOGIN_REFUSED)
            row.failed_logins, row.locked_until_ms = 0, None
            token = secrets.token_urlsafe(TOKEN_BYTES)
            session.add(ConsoleSession(token_sha256=token_hash(token), username=username,
                                       created_ms=now_ms, last_seen_ms=now_ms))
            self._log(session, username, now_ms, "ok", ip)
        return LoginResult(token, view, None)

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password[:MAX_PASSWORD_CHARS])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    @staticmethod
    def _log(session: Session, username: str, now_ms: int, outcome: str, ip: str) -> None:
        security_log.append(session, at_ms=now_ms, actor=username, action="console.login",
                            subject=username, outcome=outcome, details={"ip": ip[:64]})

    # -- sessions ----------------------------------------------------------------------------

    def resume(self, token: str) -> UserView | None:
        """Return the user of a live session (and mark it seen), or None; expired ones are deleted."""
        if not token or len(token) > 128:
            return None
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(ConsoleSession, token_hash(token), with_for_update=True)
            if row is None:
                return None
            idle = now_ms - row.last_seen_ms > self.idle_timeout_ms
            if idle or now_ms - row.created_ms > SESSION_MAX_AGE_MS:
                session.delete(row)
                return None
            user = session.get(User, row.username)
            if user is None or user.disabled_ms is not None:
                session.delete(row)
                return None
            row.last_seen_ms = now_ms
            return user_view(user)

    def logout(self, token: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == token_hash(token)))

    def end_sessions_of(self, username: str) -> None:
        """End every session of ``username`` (a disabled user is logged out everywhere)."""
        with self._sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.username == username))
