"""Users and their API keys: one database transaction per command.

An API key's HMAC secret is needed in clear to verify signatures, so it is
stored encrypted through the keystore (not hashed) and decrypted only while a
request is verified. The secret is returned once, at creation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.auth_cache import AuthCache
from custody.access.errors import AccessCode, AccessError
from custody.access.models import ApiKeyRow, User
from custody.access.secret_box import SecretBox
from policies.api_key import (
    ApiKey,
    ApiKeyCredentials,
    Scope,
    new_api_key_credentials,
    parse_ip_allowlist,
)
from policies.policy_document import MAX_KYC_TIER
from policies.request_signing import VerifiedKey
from policies.results import PolicyError, ResultCode
from policies.roles import Role, parse_role

USERNAME_PATTERN = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
# Ledger accounts of the platform itself have owners of their own ("platform" holds the hot
# wallet, "exchange.clearing" the clearing house, ...). A user with such a name would own, and
# trade from, the platform's accounts; so these names, and every name whose first segment (up to
# the first ".", "-" or "_") is a platform owner's, are refused.
PLATFORM_OWNER_NAMES = frozenset({
    "platform", "exchange", "clearing", "insurance", "external", "network-fees", "strongroom",
})
RESERVED_USERNAMES = PLATFORM_OWNER_NAMES | {"system", "root", "anonymous", "service"}
_NAME_SEPARATORS = re.compile(r"[._-]")
MAX_KEYS_PER_USER = 32
MAX_LABEL_CHARS = 128
API_KEY_PURPOSE = "api-key"


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as services and the API see it."""

    username: str
    roles: frozenset[Role]
    kyc_tier: int
    created_ms: int
    disabled_ms: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "username": self.username,
            "roles": sorted(self.roles),
            "kyc_tier": self.kyc_tier,
            "created_ms": self.created_ms,
            "disabled_ms": self.disabled_ms,
        }


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """API key metadata (never the secret)."""

    key: ApiKey
    label: str

    def to_json(self) -> dict[str, object]:
        k = self.key
        return {
            "key_id": k.key_id,
            "username": k.owner_user_id,
            "label": self.label,
            "scopes": sorted(k.scopes),
            "ip_allowlist": [str(n) for n in k.ip_allowlist],
            "created_ms": k.created_at_ms,
            "expires_ms": k.expires_at_ms,
            "revoked_ms": k.revoked_at_ms,
        }


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A created key and its secret, to be shown to its owner exactly once."""

    view: ApiKeyView
    credentials: ApiKeyCredentials

    def __repr__(self) -> str:
        return f"NewApiKey(key_id={self.view.key.key_id!r}, secret=<redacted>)"


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    """Parse role names; raise `PolicyError(role_unknown)` on an unknown one."""
    roles = frozenset(parse_role(name) for name in names)
    if not roles:
        raise PolicyError(ResultCode.ROLE_UNKNOWN, "a user needs at least one role")
    return roles


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """Parse scope names; raise `PolicyError(api_key_invalid)` on an unknown one."""
    scopes = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise PolicyError(
                ResultCode.API_KEY_INVALID, f"scope was {name!r}, must be read, trade or withdraw"
            ) from None
    return frozenset(scopes)


class Users:
    """Users and API keys."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        secrets: SecretBox,
        clock: Callable[[], int],
        credentials: Callable[[], ApiKeyCredentials] = new_api_key_credentials,
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._clock = clock
        self._credentials = credentials
        # Scale-out mode (strongroom.auth_fast): keys served from memory; every change that can
        # make a cached key or user stale is announced, after its commit, to ``changed``.
        self.cache: AuthCache | None = None
        self.changed: list[Callable[[str], None]] = []

    def _announce(self, username: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(username)
        for listener in self.changed:
            listener(username)

    # -- users -------------------------------------------------------------------------------

    def create_user(
        self,
        username: str,
        roles: frozenset[Role],
        *,
        kyc_tier: int = 0,
        actor: str = "system",
        key_scopes: frozenset[Scope] | None = None,
        key_label: str = "initial",
    ) -> tuple[UserView, NewApiKey | None]:
        """Create a user (and, with ``key_scopes``, a first API key) in one transaction."""
        _check_username(username)
        if isinstance(kyc_tier, bool) or not isinstance(kyc_tier, int) or not 0 <= kyc_tier <= MAX_KYC_TIER:
            raise AccessError(
                AccessCode.KYC_TIER_INVALID, f"kyc_tier was {kyc_tier!r}, must be 0..{MAX_KYC_TIER}"
            )
        now_ms = self._clock()
        row = User(
            username=username, roles=_join(roles), kyc_tier=kyc_tier, created_ms=now_ms, disabled_ms=None
        )
        new_key = None if key_scopes is None else self._new_key(username, key_scopes, key_label, (), None)
        try:
            with self._sessions.begin() as session:
                if session.get(User, username) is not None:
                    raise AccessError(AccessCode.USER_EXISTS, f"user {username} already exists")
                session.add(row)
                session.flush()
                security_log.append(
                    session,
                    at_ms=now_ms,
                    actor=actor,
                    action="user.create",
                    subject=username,
                    details={"roles": sorted(roles), "kyc_tier": kyc_tier},
                )
                if new_key is not None:
                    self._insert_key(session, new_key, actor)
        except IntegrityError:
            raise AccessError(AccessCode.USER_EXISTS, f"user {username} already exists") from None
        return user_view(row), (None if new_key is None else new_key[0])

    def find_user(self, username: str) -> UserView | None:
        with self._sessions() as session:
            row = session.get(User, username)
            return None if row is None else user_view(row)

    def get_user(self, username: str) -> UserView:
        found = self.find_user(username)
        if found is None:
            raise AccessError(AccessCode.USER_UNKNOWN, f"user {username} does not exist")
        return found

    def list_users(self) -> list[UserView]:
        with self._sessions() as session:
            return [user_view(r) for r in session.scalars(select(User).order_by(User.username))]

    def set_disabled(self, username: str, disabled: bool, *, actor: str) -> UserView:
        """Disable (every key stops working) or re-enable a user."""
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(User, username)
            if row is None:
                raise AccessError(AccessCode.USER_UNKNOWN, f"user {username} does not exist")
            row.disabled_ms = now_ms if disabled else None
            security_log.append(
                session,
                at_ms=now_ms,
                actor=actor,
                action="user.disable" if disabled else "user.enable",
                subject=username,
            )
            view = user_view(row)
        self._announce(username)
        return view

    # -- API keys ----------------------------------------------------------------------------

    def create_api_key(
        self,
        username: str,
        scopes: frozenset[Scope],
        *,
        label: str = "",
        ip_allowlist: Iterable[str] = (),
        expires_ms: int | None = None,
        actor: str | None = None,
    ) -> NewApiKey:
        """Create a key for ``username``; the returned secret is never stored in clear."""
        new_key = self._new_key(username, scopes, label, ip_allowlist, expires_ms)
        with self._sessions.begin() as session:
            if session.get(User, username) is None:
                raise AccessError(AccessCode.USER_UNKNOWN, f"user {username} does not exist")
            self._insert_key(session, new_key, actor or username)
        return new_key[0]

    def _new_key(
        self,
        username: str,
        scopes: frozenset[Scope],
        label: str,
        ip_allowlist: Iterable[str],
        expires_ms: int | None,
    ) -> tuple[NewApiKey, str]:
        networks = parse_ip_allowlist(ip_allowlist)
        if len(label) > MAX_LABEL_CHARS:
            raise PolicyError(ResultCode.API_KEY_INVALID, f"label must be at most {MAX_LABEL_CHARS} chars")
        credentials = self._credentials()
        key = ApiKey(credentials.key_id, username, scopes, self._clock(), expires_ms, None, networks)
        sealed = self._secrets.seal(API_KEY_PURPOSE, key.key_id, credentials.secret.encode("utf-8"))
        return NewApiKey(ApiKeyView(key, label), credentials), sealed

    def _insert_key(self, session: Session, new_key: tuple[NewApiKey, str], actor: str) -> None:
        key, sealed = new_key[0].view.key, new_key[1]
        count = len(
            session.scalars(
                select(ApiKeyRow.key_id).where(
                    ApiKeyRow.username == key.owner_user_id, ApiKeyRow.revoked_ms.is_(None)
                )
            ).all()
        )
        if count >= MAX_KEYS_PER_USER:
            raise PolicyError(
                ResultCode.API_KEY_INVALID,
                f"{key.owner_user_id} has {count} active keys, at most {MAX_KEYS_PER_USER}",
            )
        session.add(
            ApiKeyRow(
                key_id=key.key_id,
                username=key.owner_user_id,
                label=new_key[0].view.label,
                secret_ciphertext=sealed,
                scopes=_join(key.scopes),
                ip_allowlist=",".join(str(n) for n in key.ip_allowlist),
                created_ms=key.created_at_ms,
                expires_ms=key.expires_at_ms,
                revoked_ms=None,
            )
        )
        security_log.append(
            session,
            at_ms=key.created_at_ms,
            actor=actor,
            action="api_key.create",
            subject=key.key_id,
            details={"username": key.owner_user_id, "scopes": sorted(key.scopes)},
        )

    def list_api_keys(self, username: str) -> list[ApiKeyView]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.username == username)
                .order_by(ApiKeyRow.created_ms, ApiKeyRow.key_id)
            )
            return [ApiKeyView(api_key(r), r.label) for r in rows]

    def revoke_api_key(self, username: str, key_id: str, *, actor: str) -> ApiKeyView:
        """Revoke one of ``username``'s keys; another user's key is "not found"."""
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.username != username:
                raise AccessError(AccessCode.API_KEY_NOT_FOUND, f"{username} has no key {key_id}")
            if row.revoked_ms is None:
                row.revoked_ms = now_ms
                security_log.append(
                    session,
                    at_ms=now_ms,
                    actor=actor,
                    action="api_key.revoke",
                    subject=key_id,
                    details={"username": username},
                )
            view = ApiKeyView(api_key(row), row.label)
        self._announce(username)
        return view

    def verified_key(self, key_id: str) -> tuple[VerifiedKey, UserView] | None:
        """Return the key with its decrypted secret, and its user; None if unknown."""
        if self.cache is None:
            return self._load_verified_key(key_id)
        return self.cache.get("key", key_id, lambda: self._load_verified_key(key_id),
                              lambda found: found[1].username)

    def _load_verified_key(self, key_id: str) -> tuple[VerifiedKey, UserView] | None:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            user = session.get(User, row.username)
            assert user is not None, f"key {key_id} names missing user {row.username}"
            secret = self._secrets.open(API_KEY_PURPOSE, row.key_id, row.secret_ciphertext)
            return VerifiedKey(api_key(row), secret.decode("utf-8")), user_view(user)


def user_view(row: User) -> UserView:
    roles = frozenset(Role(r) for r in row.roles.split(",") if r)
    return UserView(row.username, roles, row.kyc_tier, row.created_ms, row.disabled_ms)


def api_key(row: ApiKeyRow) -> ApiKey:
    scopes = frozenset(Scope(s) for s in row.scopes.split(",") if s)
    networks = parse_ip_allowlist([n for n in row.ip_allowlist.split(",") if n])
    return ApiKey(row.key_id, row.username, scopes, row.created_ms, row.expires_ms, row.revoked_ms, networks)


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise AccessError(
            AccessCode.USERNAME_INVALID,
            f"username was {str(username)[:80]!r}, must match {USERNAME_PATTERN.pattern}",
        )
    first_segment = _NAME_SEPARATORS.split(username, maxsplit=1)[0]
    if username in RESERVED_USERNAMES or first_segment in PLATFORM_OWNER_NAMES:
        raise AccessError(AccessCode.USERNAME_INVALID,
                          f"username {username} is reserved for the platform's own accounts")


def _join(values: Iterable[str]) -> str:
    return ",".join(sorted(str(v) for v in values))
