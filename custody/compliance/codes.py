"""Result codes of compliance (the 45xx block of the custody range)."""

from __future__ import annotations

from enum import IntEnum

from custody.refusal import CustodyRefusal


class ComplianceCode(IntEnum):
    """Stable refusals of screening and case management."""

    SANCTIONS_LIST_INVALID = 4501
    CASE_NOT_FOUND = 4502
    CASE_TRANSITION_INVALID = 4503
    CASE_INPUT_INVALID = 4504
    SCREEN_INPUT_INVALID = 4505
    KYC_REVIEW_NOT_FOUND = 4506
    KYC_REVIEW_NOT_PENDING = 4507
    KYC_INPUT_INVALID = 4508
    KYC_PROVIDER_UNKNOWN = 4509
    KYC_SIGNATURE_INVALID = 4510
    DEPOSIT_NOT_FOUND = 4511
    DEPOSIT_NOT_RELEASABLE = 4512
    DEPOSIT_INPUT_INVALID = 4513
    PERSONAL_DATA_INVALID = 4514
    PERSONAL_DATA_NOT_FOUND = 4515
    TRAVEL_RULE_REQUIRED = 4516
    TRAVEL_RULE_INVALID = 4517
    TRAVEL_RULE_NOT_FOUND = 4518
    FREEZE_NOT_FOUND = 4519
    FREEZE_NOT_CLEARABLE = 4520
    CLEARANCE_APPROVER_INVALID = 4521
    CLEARANCE_INPUT_INVALID = 4522
    REPORT_INPUT_INVALID = 4523
    TRAVEL_RULE_COUNTERPARTY_UNKNOWN = 4524
    TRAVEL_RULE_SIGNATURE_INVALID = 4525
    TRAVEL_RULE_INQUIRY_DECIDED = 4526

    @property
    def error(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


COMPLIANCE_STATUS: dict[ComplianceCode, int] = {
    ComplianceCode.CASE_NOT_FOUND: 404,
    ComplianceCode.CASE_TRANSITION_INVALID: 409,
    ComplianceCode.KYC_REVIEW_NOT_FOUND: 404,
    ComplianceCode.KYC_REVIEW_NOT_PENDING: 409,
    ComplianceCode.KYC_PROVIDER_UNKNOWN: 404,
    ComplianceCode.KYC_SIGNATURE_INVALID: 401,
    ComplianceCode.DEPOSIT_NOT_FOUND: 404,
    ComplianceCode.DEPOSIT_NOT_RELEASABLE: 409,
    ComplianceCode.PERSONAL_DATA_NOT_FOUND: 404,
    ComplianceCode.TRAVEL_RULE_NOT_FOUND: 404,
    ComplianceCode.FREEZE_NOT_FOUND: 404,
    ComplianceCode.FREEZE_NOT_CLEARABLE: 409,
    ComplianceCode.CLEARANCE_APPROVER_INVALID: 409,
    ComplianceCode.TRAVEL_RULE_SIGNATURE_INVALID: 401,
    ComplianceCode.TRAVEL_RULE_INQUIRY_DECIDED: 409,
}


class ComplianceError(CustodyRefusal):
    """A refusal by the compliance services."""

    def __init__(self, code: ComplianceCode, message: str) -> None:
        super().__init__(code, message, COMPLIANCE_STATUS.get(code, 400))
