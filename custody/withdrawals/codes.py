"""Result codes of withdrawals and whitelists (the 41xx block of the custody range)."""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class WithdrawalCode(IntEnum):
    """Stable refusals of the withdrawal service."""

    WITHDRAWAL_NOT_FOUND = 4101
    WITHDRAWAL_NOT_CANCELLABLE = 4102
    WITHDRAWAL_NOT_AWAITING_APPROVAL = 4103
    WHITELIST_EXISTS = 4104
    WHITELIST_NOT_FOUND = 4105
    NO_FUNDING_ACCOUNT = 4106
    ASSET_NOT_WITHDRAWABLE = 4107
    ADDRESS_INVALID = 4108
    SOURCE_WALLET_INVALID = 4109
    WITHDRAWAL_ID_INVALID = 4110
    WITHDRAWAL_ID_RELEASED = 4111
    ACCOUNT_FROZEN = 4112
    WITHDRAWALS_HALTED = 4120
    # custody.withdrawals.lifecycle: the event does not apply to the state, or another change won.
    WITHDRAWAL_STATE_CONFLICT = 4125

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


WITHDRAWAL_STATUS: dict[WithdrawalCode, int] = {
    WithdrawalCode.WITHDRAWAL_NOT_FOUND: 404,
    WithdrawalCode.WITHDRAWAL_NOT_CANCELLABLE: 409,
    WithdrawalCode.WITHDRAWAL_NOT_AWAITING_APPROVAL: 409,
    WithdrawalCode.WHITELIST_EXISTS: 409,
    WithdrawalCode.WHITELIST_NOT_FOUND: 404,
    WithdrawalCode.NO_FUNDING_ACCOUNT: 422,
    WithdrawalCode.WITHDRAWAL_ID_RELEASED: 409,
    WithdrawalCode.ACCOUNT_FROZEN: 423,
    WithdrawalCode.WITHDRAWALS_HALTED: 423,
    WithdrawalCode.WITHDRAWAL_STATE_CONFLICT: 409,
}


class WithdrawalError(CustodyRefusal):
    """A refusal by the withdrawal service."""

    def __init__(self, code: WithdrawalCode, message: str) -> None:
        super().__init__(code, message, WITHDRAWAL_STATUS.get(code, 400))
