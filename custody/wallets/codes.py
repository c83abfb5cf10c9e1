"""Result codes of wallets and chains (the 44xx block; 445x are chain-adapter codes)."""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class WalletCode(IntEnum):
    """Stable refusals of the wallet subsystem."""

    WALLET_NOT_FOUND = 4401
    WALLET_EXISTS = 4402
    WRONG_TEMPERATURE = 4403
    INVALID_AMOUNT = 4404
    INVALID_DESTINATION = 4405
    TRANSACTION_NOT_FOUND = 4406
    TRANSACTION_CONFLICT = 4407
    UNSUPPORTED_ASSET = 4408
    POLICY_REFUSED = 4409
    PROPOSAL_NOT_FOUND = 4410
    PROPOSAL_NOT_PENDING = 4411
    DUPLICATE_APPROVAL = 4412  # Retired: approvals refuse with policies' APPROVER_DUPLICATE (5024).
    NO_RECONCILIATION = 4413
    CHAIN_NOT_CONFIGURED = 4414
    INVALID_OWNER = 4415
    SELF_APPROVAL = 4416  # Retired: approvals refuse with policies' APPROVAL_SELF (5025).
    SIGNED_BUNDLE_REJECTED = 4417
    INSUFFICIENT_COINS = 4418

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


WALLET_STATUS: dict[WalletCode, int] = {
    WalletCode.WALLET_NOT_FOUND: 404,
    WalletCode.WALLET_EXISTS: 409,
    WalletCode.TRANSACTION_NOT_FOUND: 404,
    WalletCode.TRANSACTION_CONFLICT: 409,
    WalletCode.PROPOSAL_NOT_FOUND: 404,
    WalletCode.PROPOSAL_NOT_PENDING: 409,
    WalletCode.DUPLICATE_APPROVAL: 409,
    WalletCode.SELF_APPROVAL: 403,
    WalletCode.NO_RECONCILIATION: 404,
    WalletCode.POLICY_REFUSED: 403,
    WalletCode.CHAIN_NOT_CONFIGURED: 503,
}


class WalletError(CustodyRefusal):
    """An expected refusal of the wallet subsystem, with a stable code.

    A ``CustodyRefusal``, so wherever it surfaces (a withdrawal, a cold transfer, a
    CLI command) it answers with its stable code and status, never as an internal error.
    """

    def __init__(self, code: WalletCode, message: str) -> None:
        super().__init__(code, message, WALLET_STATUS.get(code, 400))
        self.code: WalletCode = code
