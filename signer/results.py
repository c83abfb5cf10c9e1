"""Result codes of the offline signer: the 7xxx block.

Every expected refusal is a `SignerRefusal` value with one of these codes;
when the refusal comes from a policies check (an approval that does not
count), `cause` carries the policies code (5xxx) as well. The snake_case
`error` string of each code is stable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from policies.results import ResultCode


@enum.unique
class SignerCode(enum.IntEnum):
    """Stable codes for every expected refusal in signer/."""

    # 700x: the bundle's bytes and structure.
    BUNDLE_MALFORMED = 7001
    BUNDLE_VERSION_UNSUPPORTED = 7002
    BUNDLE_TRAILING_BYTES = 7003
    BUNDLE_DUPLICATE_KEY = 7004
    BUNDLE_NOT_CANONICAL = 7005
    BUNDLE_TOO_LARGE = 7006
    # 701x: who made it and when.
    PLATFORM_KEY_UNKNOWN = 7010
    PLATFORM_SIGNATURE_INVALID = 7011
    BUNDLE_EXPIRED = 7012
    # 702x: the signer's own trust anchors.
    ANCHORS_INVALID = 7020
    WALLET_UNKNOWN = 7021
    ASSET_UNKNOWN = 7022
    POLICY_RULE_UNKNOWN = 7023
    NETWORK_MISMATCH = 7024
    LIMIT_EXCEEDED = 7025
    POLICY_RULE_BELOW_FLOOR = 7026
    # 703x: approvals (policies does the checking).
    APPROVALS_INSUFFICIENT = 7030
    APPROVAL_REJECTED = 7031
    APPROVAL_OUTDATED = 7032
    # 704x: the transaction against the intent.
    TX_MALFORMED = 7040
    DESTINATION_MISMATCH = 7041
    AMOUNT_MISMATCH = 7042
    FEE_OVER_CAP = 7043
    CHAIN_ID_MISMATCH = 7044
    OUTPUT_NOT_OURS = 7045
    INPUT_NOT_OURS = 7046
    INPUT_AMOUNT_MISSING = 7047
    SIGHASH_UNSUPPORTED = 7048
    SENDER_MISMATCH = 7049
    CALLDATA_MISMATCH = 7050
    INPUT_UTXO_MISMATCH = 7051
    INPUT_DUPLICATE = 7052
    OUTPUTS_EXCEED_INPUTS = 7053
    OUTPUT_DUST = 7054
    TX_TOO_LARGE = 7055
    CHANGE_NOT_CHANGE_BRANCH = 7056
    CHANGE_INDEX_OUT_OF_WINDOW = 7057
    LOCKTIME_MISMATCH = 7058
    SEQUENCE_MISMATCH = 7059
    # 706x: signing and the signing log.
    ALREADY_SIGNED = 7060
    BUNDLE_ID_REUSED = 7061
    REQUEST_ALREADY_SIGNED = 7062
    LOG_CORRUPT = 7063
    KEY_NOT_IN_WALLET = 7064
    NOT_CONFIRMED = 7065
    WARNING_NOT_ACCEPTED = 7066
    RESUME_NOT_SIGNED = 7067
    RESUME_MISMATCH = 7068
    # 707x: the offline keystore.
    KEYSTORE_MALFORMED = 7070
    PASSPHRASE_WRONG = 7071
    KEYSTORE_TAMPERED = 7072
    MNEMONIC_INVALID = 7073
    KEYSTORE_EXISTS = 7074
    KEYSTORE_PERMISSIONS = 7075
    KEYSTORE_MISSING = 7076
    # 708x: the machine.
    MACHINE_ONLINE = 7080
    # 709x: QR transport.
    QR_FRAME_CORRUPT = 7090
    QR_FRAME_MISSING = 7091
    QR_FRAME_DUPLICATE = 7092
    QR_SET_MISMATCH = 7093
    QR_PAYLOAD_CORRUPT = 7094
    # 710x: the signed result, as the platform imports it.
    SIGNED_MALFORMED = 7100
    SIGNED_MISMATCH = 7101

    @property
    def error(self) -> str:
        """Return the stable snake_case name."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class SignerRefusal:
    """An expected refusal: a code, a message for humans, and the policies code behind it."""

    code: SignerCode
    message: str
    cause: ResultCode | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": int(self.code), "error": self.code.error, "message": self.message}
        if self.cause is not None:
            body["cause"] = {"code": int(self.cause), "error": self.cause.error}
        return body

    def __str__(self) -> str:
        cause = f" [{int(self.cause)} {self.cause.error}]" if self.cause is not None else ""
        return f"{int(self.code)} {self.code.error}{cause}: {self.message}"


class SignerError(Exception):
    """Raised where a refusal cannot be returned as a value (parsing, keystore, I/O)."""

    def __init__(self, code: SignerCode, message: str, cause: ResultCode | None = None) -> None:
        self.refusal = SignerRefusal(code, message, cause)
        super().__init__(str(self.refusal))

    @property
    def code(self) -> SignerCode:
        return self.refusal.code
