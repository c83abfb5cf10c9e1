"""The web console (``/console``): one server-rendered app for traders, treasury, auditors and admins.

People log in with username, password (argon2id) and a TOTP code; the session
is a random token in a cookie (HttpOnly, SameSite=Strict, Secure except on
plain-http loopback for local development) whose SHA-256 is the server-side
session row. Every POST carries the session's CSRF token; every page is sent
with a strict Content-Security-Policy (no inline script or style, nothing from
another origin). Each page needs a permission from `policies.roles`, and each
action is the REST API's own view called in-process as the person
(`strongroom.console.api`), so the console can do nothing the API would refuse.
docs/console.md describes the pages and the demo logins.
"""

from __future__ import annotations

from flask import Flask

from strongroom.console import personal_api
from strongroom.console.accounts import ConsoleAccounts
from strongroom.console.views import bp

EXTENSION = "strongroom.console"


def init_app(app: Flask) -> None:
    """Register the console blueprint and its account service on ``app``."""
    access = app.extensions["strongroom.access"]
    app.extensions[EXTENSION] = ConsoleAccounts(
        access.sessions, access.mfa, access.clock,
        hasher=app.config.get("CONSOLE_PASSWORD_HASHER"),
        idle_timeout_ms=int(app.config.get("CONSOLE_IDLE_TIMEOUT_MS", 15 * 60 * 1000)))
    personal_api.init_app(app)
    app.register_blueprint(bp)
