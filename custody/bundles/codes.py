"""Result codes of cold transfers through the offline signer (the 48xx block of the custody range)."""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class BundleCode(IntEnum):
    """Stable refusals of bundle export and import."""

    BUNDLE_NOT_FOUND = 4801
    REQUEST_NOT_FOUND = 4802
    REQUEST_NOT_READY = 4803
    CHAIN_NOT_CONFIGURED = 4804
    QUORUM_NOT_MET = 4805
    SIGNED_REFUSED = 4806
    SIGNED_CONFLICT = 4807
    BUNDLE_SUPERSEDED = 4808
    COLD_BALANCE_SHORT = 4809
    REQUEST_MISMATCH = 4810
    HOLD_NOT_LIVE = 4811
    WITHDRAWALS_HALTED = 4812

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


BUNDLE_STATUS: dict[BundleCode, int] = {
    BundleCode.HOLD_NOT_LIVE: 409,
    BundleCode.WITHDRAWALS_HALTED: 423,
    BundleCode.BUNDLE_NOT_FOUND: 404,
    BundleCode.REQUEST_NOT_FOUND: 404,
    BundleCode.REQUEST_NOT_READY: 409,
    BundleCode.CHAIN_NOT_CONFIGURED: 503,
    BundleCode.SIGNED_CONFLICT: 409,
    BundleCode.BUNDLE_SUPERSEDED: 409,
    BundleCode.COLD_BALANCE_SHORT: 409,
}


class BundleError(CustodyRefusal):
    """A refusal by the cold-transfer service; ``cause`` carries a signer (7xxx) or policy code."""

    def __init__(self, code: BundleCode, message: str, cause: int | None = None) -> None:
        super().__init__(code, message, BUNDLE_STATUS.get(code, 400))
        self.cause = cause
