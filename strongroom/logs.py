"""Structured JSON logs with request ids (``STRONGROOM_LOG_FORMAT=json``; docs/production.md).

Every request gets an id: the caller's ``X-Request-Id`` when it is a short
token (a proxy's), else a fresh one; it is echoed in the response header and
on every log line written while the request runs, so one id ties the proxy,
the API worker and the logs together. Log lines carry what the code logged,
never request bodies or headers: secrets (API secrets, TOTP codes, keys) are
never logged by the callers (tests/strongroom/test_metrics.py checks a signed
request's secret and signature do not appear).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from typing import Any, Final

from flask import Flask, Response, g, has_request_context, request

HEADER: Final = "X-Request-Id"
_ACCEPTED_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdFilter(logging.Filter):
    """Put the current request's id (or "-") on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (+ exception type and trace)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info and record.exc_info[0] is not None:
            body["exc_type"] = record.exc_info[0].__name__
            body["trace"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def configure(level: str | int = "INFO", fmt: str | None = None) -> None:
    """Send the root logger's records to stderr as JSON (``fmt`` "json") or plain text."""
    fmt = fmt or os.environ.get("STRONGROOM_LOG_FORMAT", "text")
    root = logging.getLogger()
    if fmt != "json" or any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root.handlers = [handler]
    root.setLevel(level)


def init_app(app: Flask) -> None:
    """Give every request an id (header in, header out)."""

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get(HEADER, "")
        g.request_id = given if _ACCEPTED_ID.fullmatch(given) else secrets.token_hex(8)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[HEADER] = g.request_id
        return response
