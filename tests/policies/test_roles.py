from __future__ import annotations

import pytest

from policies.results import PolicyError, ResultCode
from policies.roles import (
    MFA_REQUIRED_PERMISSIONS,
    READ_ONLY_PERMISSIONS,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    authorize,
    can_read_account,
    has_permission,
    parse_role,
)

P = Permission
# The full matrix, written out so any change to a role's rights shows up
# here as a deliberate edit.
EXPECTED: dict[Role, set[Permission]] = {
    Role.TRADER: {
        P.LEDGER_READ_OWN,
        P.TRADE,
        P.WITHDRAW_REQUEST,
        P.WHITELIST_MANAGE_OWN,
        P.APIKEY_MANAGE_OWN,
        P.MFA_MANAGE_OWN,
        P.SETTINGS_MANAGE_OWN,
    },
    Role.TREASURY: {
        P.WITHDRAW_READ_ALL,
        P.WITHDRAW_APPROVE,
        P.WALLET_READ,
        P.WALLET_MANAGE,
        P.POLICY_READ,
        P.APIKEY_MANAGE_OWN,
        P.MFA_MANAGE_OWN,
        P.SETTINGS_MANAGE_OWN,
    },
    Role.AUDITOR: {
        P.LEDGER_READ_ALL,
        P.LEDGER_EXPORT,
        P.WITHDRAW_READ_ALL,
        P.WALLET_READ,
        P.POLICY_READ,
        P.AUDIT_READ,
        P.REPORTS_READ,
        P.MFA_MANAGE_OWN,
        P.SETTINGS_MANAGE_OWN,
    },
    Role.COMPLIANCE: {
        P.LEDGER_READ_ALL,
        P.WITHDRAW_READ_ALL,
        P.WITHDRAW_APPROVE,
        P.POLICY_READ,
        P.AUDIT_READ,
        P.USERS_READ,
        P.KYC_READ,
        P.KYC_MANAGE,
        P.AML_REVIEW,
        P.REPORTS_READ,
        P.APIKEY_MANAGE_OWN,
        P.MFA_MANAGE_OWN,
        P.SETTINGS_MANAGE_OWN,
    },
    Role.ADMIN: {
        P.USERS_READ,
        P.USERS_MANAGE,
        P.POLICY_READ,
        P.POLICY_PROPOSE,
        P.POLICY_APPROVE,
        P.AUDIT_READ,
        P.APIKEY_MANAGE_OWN,
        P.MFA_MANAGE_OWN,
        P.SETTINGS_MANAGE_OWN,
    },
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_matrix_grants_exactly_the_expected_permissions(role: Role, permission: Permission) -> None:
    assert has_permission([role], permission) is (permission in EXPECTED[role])


def test_role_matrix_covers_every_role() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_role_auditor_changes_nothing() -> None:
    own = {P.MFA_MANAGE_OWN, P.SETTINGS_MANAGE_OWN}
    writes = ROLE_PERMISSIONS[Role.AUDITOR] - READ_ONLY_PERMISSIONS - own
    assert writes == set()


def test_role_treasury_cannot_trade() -> None:
    assert not has_permission([Role.TREASURY], P.TRADE)


def test_role_admin_cannot_move_money() -> None:
    for permission in (P.TRADE, P.WITHDRAW_REQUEST, P.WITHDRAW_APPROVE, P.WALLET_MANAGE):
        assert not has_permission([Role.ADMIN], permission)


def test_role_no_roles_have_no_permissions() -> None:
    assert not any(has_permission([], p) for p in Permission)


def test_role_permissions_union_over_roles() -> None:
    assert has_permission([Role.TRADER, Role.AUDITOR], P.TRADE)
    assert has_permission([Role.TRADER, Role.AUDITOR], P.AUDIT_READ)


def test_can_read_account_trader_sees_only_own() -> None:
    assert can_read_account([Role.TRADER], "u1", "u1")
    assert not can_read_account([Role.TRADER], "u1", "u2")


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.COMPLIANCE])
def test_can_read_account_readers_of_all_see_any(role: Role) -> None:
    assert can_read_account([role], "u1", "u2")


@pytest.mark.parametrize("role", [Role.TREASURY, Role.ADMIN])
def test_can_read_account_without_ledger_rights_sees_none(role: Role) -> None:
    assert not can_read_account([role], "u1", "u1")


def test_authorize_missing_permission_refused_with_permission_denied() -> None:
    refusal = authorize([Role.AUDITOR], P.WITHDRAW_APPROVE, mfa_verified=True)
    assert refusal is not None
    assert refusal.code is ResultCode.PERMISSION_DENIED
    assert "withdraw.approve" in refusal.message


def test_authorize_sensitive_permission_without_mfa_refused() -> None:
    refusal = authorize([Role.TRADER], P.WITHDRAW_REQUEST, mfa_verified=False)
    assert refusal is not None and refusal.code is ResultCode.MFA_REQUIRED
    assert authorize([Role.TRADER], P.WITHDRAW_REQUEST, mfa_verified=True) is None


def test_authorize_read_permission_without_mfa_allowed() -> None:
    assert authorize([Role.TRADER], P.LEDGER_READ_OWN, mfa_verified=False) is None


def test_mfa_required_for_withdrawals_whitelist_approvals_and_policy_changes() -> None:
    for permission in (
        P.WITHDRAW_REQUEST,
        P.WHITELIST_MANAGE_OWN,
        P.WITHDRAW_APPROVE,
        P.POLICY_PROPOSE,
        P.POLICY_APPROVE,
    ):
        assert permission in MFA_REQUIRED_PERMISSIONS


def test_parse_role_unknown_name_rejected() -> None:
    assert parse_role("auditor") is Role.AUDITOR
    with pytest.raises(PolicyError) as info:
        parse_role("root")
    assert info.value.code is ResultCode.ROLE_UNKNOWN
