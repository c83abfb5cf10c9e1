"""Approver public keys: registration, revocation, and the registry `verify_quorum` needs.

A user's approval groups are their role names (treasury, compliance, admin),
so "2 of treasury" means two distinct users holding the treasury role. A
disabled user is in no group: their approvals stop counting at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.access.errors import AccessCode, AccessError
from custody.access.models import ApproverKeyRow, User
from custody.access.users import user_view
from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.identifier import is_identifier
from policies.results import PolicyError
from policies.signature_scheme import SignatureScheme


@dataclass(frozen=True, slots=True)
class ApproverKeyView:
    key: ApproverKey
    registered_ms: int

    def to_json(self) -> dict[str, object]:
        k = self.key
        return {
            "key_id": k.key_id,
            "username": k.approver_id,
            "scheme": k.scheme.value,
            "public_key": k.public_key.hex(),
            "registered_ms": self.registered_ms,
            "revoked_ms": k.revoked_at_ms,
        }


class Approvers:
    """Register and revoke approver keys; build the registry from the database."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int]) -> None:
        self._sessions = sessions
        self._clock = clock

    def register(
        self,
        username: str,
        key_id: str,
        public_key: bytes,
        scheme: SignatureScheme = SignatureScheme.ED25519,
        *,
        actor: str,
    ) -> ApproverKeyView:
        """Register ``public_key`` as ``username``'s key ``key_id``."""
        if not is_identifier(key_id):
            raise AccessError(
                AccessCode.APPROVER_KEY_INVALID,
                f"key_id was {key_id[:140]!r}, must be 1..128 printable ASCII characters",
            )
        try:
            key = ApproverKey(key_id, username, scheme, public_key)
        except PolicyError as exc:
            raise AccessError(AccessCode.APPROVER_KEY_INVALID, exc.message) from None
        now_ms = self._clock()
        try:
            with self._sessions.begin() as session:
                if session.get(User, username) is None:
                    raise AccessError(AccessCode.USER_UNKNOWN, f"user {username} does not exist")
                if session.get(ApproverKeyRow, key_id) is not None:
                    raise AccessError(AccessCode.APPROVER_KEY_EXISTS, f"key {key_id} is already registered")
                session.add(
                    ApproverKeyRow(
                        key_id=key_id,
                        username=username,
                        scheme=scheme.value,
                        public_key_hex=public_key.hex(),
                        registered_ms=now_ms,
                        revoked_ms=None,
                    )
                )
                session.flush()
                security_log.append(
                    session,
                    at_ms=now_ms,
                    actor=actor,
                    action="approver_key.register",
                    subject=key_id,
                    details={"username": username, "public_key": public_key.hex()},
                )
        except IntegrityError:
            raise AccessError(
                AccessCode.APPROVER_KEY_EXISTS, f"key {key_id} or its public key is already registered"
            ) from None
        return ApproverKeyView(key, now_ms)

    def revoke(self, username: str, key_id: str, *, actor: str) -> ApproverKeyView:
        now_ms = self._clock()
        with self._sessions.begin() as session:
            row = session.get(ApproverKeyRow, key_id)
            if row is None or row.username != username:
                raise AccessError(
                    AccessCode.APPROVER_KEY_NOT_FOUND, f"{username} has no approver key {key_id}"
                )
            if row.revoked_ms is None:
                row.revoked_ms = now_ms
                security_log.append(
                    session,
                    at_ms=now_ms,
                    actor=actor,
                    action="approver_key.revoke",
                    subject=key_id,
                    details={"username": username},
                )
            return _view(row)

    def list_keys(self, username: str | None = None) -> list[ApproverKeyView]:
        query = select(ApproverKeyRow).order_by(ApproverKeyRow.registered_ms, ApproverKeyRow.key_id)
        if username is not None:
            query = query.where(ApproverKeyRow.username == username)
        with self._sessions() as session:
            return [_view(row) for row in session.scalars(query)]


def load_registry(session: Session) -> ApproverRegistry:
    """Build the approver registry from users and their keys, inside ``session``."""
    approvers = []
    holders = select(ApproverKeyRow.username).distinct()
    for row in session.scalars(select(User).where(User.username.in_(holders))):
        user = user_view(row)
        groups = frozenset() if user.disabled_ms is not None else frozenset(r.value for r in user.roles)
        approvers.append(Approver(user.username, groups))
    keys = [_view(row).key for row in session.scalars(select(ApproverKeyRow))]
    return ApproverRegistry.build(approvers, keys)


def _view(row: ApproverKeyRow) -> ApproverKeyView:
    key = ApproverKey(
        row.key_id,
        row.username,
        SignatureScheme(row.scheme),
        bytes.fromhex(row.public_key_hex),
        row.revoked_ms,
    )
    return ApproverKeyView(key, row.registered_ms)
