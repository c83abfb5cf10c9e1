"""Rate limits per API key and per client IP (flask-limiter), with standard headers.

Both limits apply to every route. The per-key limit counts only requests that
got past authentication (not 401), so someone who merely *names* another
user's key id cannot use up that user's budget; the per-IP limit counts
everything. A breach answers 429 with the usual ``{code, error, message}``
body (code 9029 ``rate_limited``) and ``Retry-After``.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_limiter import Limit, Limiter

from policies.request_signing import HEADER_KEY_ID

DEFAULT_PER_KEY = "600 per minute"
DEFAULT_PER_IP = "1200 per minute"
MAX_KEY_CHARS = 128


def client_ip() -> str:
    return request.remote_addr or "unknown"


def api_key_or_ip() -> str:
    key_id = request.headers.get(HEADER_KEY_ID)
    if key_id:
        return "key:" + key_id[:MAX_KEY_CHARS]
    return "ip:" + client_ip()


def _authenticated(response: Response) -> bool:
    return response.status_code != 401


def init_rate_limits(app: Flask) -> Limiter:
    """Attach a limiter configured from ``RATELIMIT_PER_KEY`` / ``_PER_IP`` / ``_STORAGE_URI``."""
    per_key = app.config.get("RATELIMIT_PER_KEY", DEFAULT_PER_KEY)
    per_ip = app.config.get("RATELIMIT_PER_IP", DEFAULT_PER_IP)
    limiter = Limiter(
        client_ip,
        app=app,
        headers_enabled=True,
        storage_uri=app.config.get("RATELIMIT_STORAGE_URI", "memory://"),
        default_limits=[
            Limit(per_key, key_function=api_key_or_ip, scope="key", deduct_when=_authenticated),
            Limit(per_ip, key_function=client_ip, scope="ip"),
        ],
        enabled=app.config.get("RATELIMIT_ENABLED", True),
    )
    return limiter
