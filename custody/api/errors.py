"""One place that turns refusals into ``{"code", "error", "message"}`` JSON responses.

Every blueprint raises typed errors; this module maps them to HTTP statuses.
Clients never see a stack trace: unexpected exceptions become a generic 500
with a stable code while the details go to the server log.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from custody.ledger.codes import LedgerCode, LedgerError
from custody.refusal import CustodyRefusal
from policies.results import PolicyError

log = logging.getLogger(__name__)


class RequestCode(IntEnum):
    """Transport-level refusals (the 9xxx block): malformed requests, unknown routes."""

    INVALID_JSON = 9001
    INVALID_FIELD = 9002
    JSON_TOO_DEEP = 9003
    NOT_FOUND = 9004
    METHOD_NOT_ALLOWED = 9005
    PAYLOAD_TOO_LARGE = 9013
    UNSUPPORTED_MEDIA_TYPE = 9015
    RATE_LIMITED = 9029
    DATABASE_UNAVAILABLE = 9503
    NOT_READY = 9504
    # Scale-out mode: the shared nonce store (NATS) did not answer; the request was not run.
    AUTH_STORE_UNAVAILABLE = 9505
    INTERNAL_ERROR = 9099


class ApiError(Exception):
    """A refusal with a stable code, a human message and an HTTP status."""

    def __init__(self, code: IntEnum, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra


_HTTP_CODES = {
    400: RequestCode.INVALID_FIELD,
    404: RequestCode.NOT_FOUND,
    405: RequestCode.METHOD_NOT_ALLOWED,
    413: RequestCode.PAYLOAD_TOO_LARGE,
    415: RequestCode.UNSUPPORTED_MEDIA_TYPE,
    429: RequestCode.RATE_LIMITED,
}

LEDGER_STATUS: dict[LedgerCode, int] = {
    LedgerCode.UNKNOWN_ACCOUNT: 404,
    LedgerCode.TRANSFER_NOT_FOUND: 404,
    LedgerCode.PENDING_TRANSFER_NOT_FOUND: 404,
    LedgerCode.ACCOUNT_EXISTS: 409,
    LedgerCode.TRANSFER_EXISTS_WITH_DIFFERENT_FIELDS: 409,
    LedgerCode.PENDING_TRANSFER_ALREADY_POSTED: 409,
    LedgerCode.PENDING_TRANSFER_ALREADY_VOIDED: 409,
    LedgerCode.PENDING_TRANSFER_EXPIRED: 409,
    LedgerCode.INSUFFICIENT_FUNDS: 422,
    LedgerCode.CREDITS_EXCEED_DEBITS: 422,
    LedgerCode.POST_AMOUNT_EXCEEDS_PENDING: 422,
    LedgerCode.ASSET_MISMATCH: 422,
    LedgerCode.LINKED_TRANSFER_FAILED: 422,
}


# Messages quote what the client sent; a 4 MiB field must not come back 4 MiB long.
MESSAGE_MAX_CHARS = 512


def error_body(code: IntEnum, message: str, **extra: Any) -> dict[str, Any]:
    """Return the JSON error object every endpoint uses."""
    if len(message) > MESSAGE_MAX_CHARS:
        message = message[: MESSAGE_MAX_CHARS - 3] + "..."
    return {"code": int(code), "error": code.name.lower(), "message": message, **extra}


def register_error_handlers(app: Flask) -> None:
    """Map every refusal type to JSON on ``app``."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return jsonify(error_body(exc.code, exc.message, **exc.extra)), exc.status

    @app.errorhandler(LedgerError)
    def _ledger_error(exc: LedgerError) -> ResponseReturnValue:
        extra = {} if exc.index is None else {"index": exc.index}
        return jsonify(error_body(exc.code, exc.message, **extra)), LEDGER_STATUS.get(exc.code, 400)

    @app.errorhandler(PolicyError)
    def _policy_error(exc: PolicyError) -> ResponseReturnValue:
        return jsonify(error_body(exc.code, exc.message)), exc.code.http_status

    @app.errorhandler(CustodyRefusal)
    def _custody_refusal(exc: CustodyRefusal) -> ResponseReturnValue:
        return jsonify(error_body(exc.code, exc.message)), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, RequestCode.INTERNAL_ERROR)
        # Keep headers the exception carries (Retry-After on 429, Allow on 405).
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return jsonify(error_body(code, exc.description or exc.name)), status, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return jsonify(error_body(RequestCode.INTERNAL_ERROR, "internal error")), 500
