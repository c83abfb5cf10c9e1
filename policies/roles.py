"""Roles, permissions and the least-privilege matrix between them.

Each role gets only what its job needs: traders act on their own accounts,
treasury moves and approves custody funds but cannot trade, auditors and
compliance read, admins manage users and policy but do not move money.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from policies.results import PolicyError, Refusal, ResultCode


class Role(enum.StrEnum):
    TRADER = "trader"
    TREASURY = "treasury"
    AUDITOR = "auditor"
    COMPLIANCE = "compliance"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    LEDGER_READ_OWN = "ledger.read_own"
    LEDGER_READ_ALL = "ledger.read_all"
    LEDGER_EXPORT = "ledger.export"
    TRADE = "trade"
    WITHDRAW_REQUEST = "withdraw.request"
    WITHDRAW_READ_ALL = "withdraw.read_all"
    WITHDRAW_APPROVE = "withdraw.approve"
    WHITELIST_MANAGE_OWN = "whitelist.manage_own"
    WALLET_READ = "wallet.read"
    WALLET_MANAGE = "wallet.manage"
    POLICY_READ = "policy.read"
    POLICY_PROPOSE = "policy.propose"
    POLICY_APPROVE = "policy.approve"
    AUDIT_READ = "audit.read"
    APIKEY_MANAGE_OWN = "apikey.manage_own"
    MFA_MANAGE_OWN = "mfa.manage_own"
    # One's own console layout, defaults, alerts and alert webhook (strongroom/console).
    SETTINGS_MANAGE_OWN = "settings.manage_own"
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"
    KYC_READ = "kyc.read"
    KYC_MANAGE = "kyc.manage"
    AML_REVIEW = "aml.review"
    REPORTS_READ = "reports.read"


# Permissions that only let their holder look. Auditors hold nothing else.
READ_ONLY_PERMISSIONS: frozenset[Permission] = frozenset(
    {
        Permission.LEDGER_READ_OWN,
        Permission.LEDGER_READ_ALL,
        Permission.LEDGER_EXPORT,
        Permission.WITHDRAW_READ_ALL,
        Permission.WALLET_READ,
        Permission.POLICY_READ,
        Permission.AUDIT_READ,
        Permission.USERS_READ,
        Permission.KYC_READ,
        Permission.REPORTS_READ,
    }
)

# Managing one's own second factor, API keys, settings and alerts is self-service, not a
# change to anyone else's data, so every role has it.
_SELF_SERVICE = frozenset({Permission.MFA_MANAGE_OWN, Permission.APIKEY_MANAGE_OWN,
                           Permission.SETTINGS_MANAGE_OWN})

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.TRADER: _SELF_SERVICE
    | {
        Permission.LEDGER_READ_OWN,
        Permission.TRADE,
        Permission.WITHDRAW_REQUEST,
        Permission.WHITELIST_MANAGE_OWN,
    },
    Role.TREASURY: _SELF_SERVICE
    | {
        Permission.WITHDRAW_READ_ALL,
        Permission.WITHDRAW_APPROVE,
        Permission.WALLET_READ,
        Permission.WALLET_MANAGE,
        Permission.POLICY_READ,
    },
    # Auditors change nothing but their own second factor and their own display settings/alerts.
    Role.AUDITOR: frozenset({Permission.MFA_MANAGE_OWN, Permission.SETTINGS_MANAGE_OWN})
    | {
        Permission.LEDGER_READ_ALL,
        Permission.LEDGER_EXPORT,
        Permission.WITHDRAW_READ_ALL,
        Permission.WALLET_READ,
        Permission.POLICY_READ,
        Permission.AUDIT_READ,
        Permission.REPORTS_READ,
    },
    # Compliance approves withdrawals that policy sends to compliance review
    # (the default policy's velocity-count rule); group membership in the
    # quorum check decides which approvals count.
    Role.COMPLIANCE: _SELF_SERVICE
    | {
        Permission.LEDGER_READ_ALL,
        Permission.WITHDRAW_READ_ALL,
        Permission.WITHDRAW_APPROVE,
        Permission.POLICY_READ,
        Permission.AUDIT_READ,
        Permission.USERS_READ,
        Permission.KYC_READ,
        Permission.KYC_MANAGE,
        Permission.AML_REVIEW,
        Permission.REPORTS_READ,
    },
    Role.ADMIN: _SELF_SERVICE
    | {
        Permission.USERS_READ,
        Permission.USERS_MANAGE,
        Permission.POLICY_READ,
        Permission.POLICY_PROPOSE,
        Permission.POLICY_APPROVE,
        Permission.AUDIT_READ,
    },
}

# Actions that move money or change security settings need a fresh second
# factor on top of the permission.
MFA_REQUIRED_PERMISSIONS: frozenset[Permission] = frozenset(
    {
        Permission.WITHDRAW_REQUEST,
        Permission.WITHDRAW_APPROVE,
        Permission.WHITELIST_MANAGE_OWN,
        Permission.WALLET_MANAGE,
        Permission.POLICY_PROPOSE,
        Permission.POLICY_APPROVE,
        Permission.APIKEY_MANAGE_OWN,
        Permission.USERS_MANAGE,
    }
)


def parse_role(name: str) -> Role:
    """Return the role called `name`; raise `PolicyError(role_unknown)` otherwise."""
    try:
        return Role(name)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise PolicyError(ResultCode.ROLE_UNKNOWN, f"role was {name!r}, must be one of {allowed}") from None


def permissions_for(roles: Iterable[Role]) -> frozenset[Permission]:
    """Return the union of the permissions of `roles`."""
    granted: frozenset[Permission] = frozenset()
    for role in roles:
        granted |= ROLE_PERMISSIONS[role]
    return granted


def has_permission(roles: Iterable[Role], permission: Permission) -> bool:
    return permission in permissions_for(roles)


def requires_mfa(permission: Permission) -> bool:
    return permission in MFA_REQUIRED_PERMISSIONS


def authorize(roles: Iterable[Role], permission: Permission, *, mfa_verified: bool) -> Refusal | None:
    """Return why `roles` may not use `permission` now, or None if they may."""
    held = tuple(roles)
    if not has_permission(held, permission):
        names = ", ".join(sorted(r.value for r in held)) or "none"
        return Refusal(
            ResultCode.PERMISSION_DENIED,
            f"permission {permission.value} is not granted to roles {names}",
        )
    if requires_mfa(permission) and not mfa_verified:
        return Refusal(ResultCode.MFA_REQUIRED, f"{permission.value} requires a verified MFA code")
    return None


def can_read_account(roles: Iterable[Role], actor_user_id: str, owner_user_id: str) -> bool:
    """Return whether the actor may read an account owned by `owner_user_id`.

    Readers of everything (auditors, compliance) may; traders only their own.
    """
    granted = permissions_for(roles)
    if Permission.LEDGER_READ_ALL in granted:
        return True
    return Permission.LEDGER_READ_OWN in granted and actor_user_id == owner_user_id
