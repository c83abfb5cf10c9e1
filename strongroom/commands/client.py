"""``strongroom api METHOD PATH``: a signed HTTP request from the command line (like curl).

The key id and secret come from ``STRONGROOM_API_KEY`` and ``STRONGROOM_API_SECRET``
(never from arguments, which end up in shell history and process lists).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import click

from policies.request_signing import sign_request

HTTP_METHODS = ("GET", "POST", "DELETE")
REQUEST_TIMEOUT_S = 30


@click.command("api")
@click.argument("method", type=click.Choice(HTTP_METHODS, case_sensitive=False))
@click.argument("path")
@click.option("--json", "json_body", default=None, help="JSON request body.")
@click.option("--mfa", default=None, help="A TOTP code for endpoints that require MFA.")
@click.option("--idempotency-key", default=None, help="Makes a retried POST return the original result.")
@click.option("--url", default=None, help="Server base URL (default http://STRONGROOM_HOST:STRONGROOM_PORT).")
def api(method: str, path: str, json_body: str | None, mfa: str | None, idempotency_key: str | None,
        url: str | None) -> None:
    """Send a request signed with HMAC-SHA256 (docs/request-signing.md) and print the JSON answer."""
    key_id, secret = os.environ.get("STRONGROOM_API_KEY"), os.environ.get("STRONGROOM_API_SECRET")
    if not key_id or not secret:
        raise click.UsageError("set STRONGROOM_API_KEY and STRONGROOM_API_SECRET")
    if json_body is not None:
        try:
            json.loads(json_body)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None
    base = url or f"http://{os.environ.get('STRONGROOM_HOST', '127.0.0.1')}:" \
                  f"{os.environ.get('STRONGROOM_PORT', '8600')}"
    if urlsplit(base).scheme not in ("http", "https"):
        raise click.BadParameter(f"was {base!r}, must be an http:// or https:// URL", param_hint="--url")
    if not path.startswith("/"):
        raise click.BadParameter(f"was {path!r}, must start with /", param_hint="PATH")
    parts = urlsplit(path)
    body = (json_body or "").encode()
    headers = sign_request(key_id=key_id, secret=secret, timestamp_ms=time.time_ns() // 1_000_000,
                           method=method.upper(), path=parts.path, query=parts.query, body=body)
    if json_body is not None:
        headers["Content-Type"] = "application/json"
    if mfa:
        headers["X-Strongroom-MFA"] = mfa
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    # The scheme was checked above to be http(s), so S310's file:// concern does not apply.
    request = urllib.request.Request(  # noqa: S310
        base.rstrip("/") + path, data=body if json_body is not None else None,
        headers=headers, method=method.upper())
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {base}: {exc.reason}") from None
    click.echo(payload.decode("utf-8", "replace").rstrip())
    if status >= 400:
        sys.exit(1)
