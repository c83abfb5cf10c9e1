"""Console request plumbing: session cookie, CSRF, security headers, page permissions, units."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast

from flask import Response, abort, current_app, g, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response as BaseResponse

from custody.access.users import UserView
from custody.assets import get_asset
from policies.roles import Permission, Role, has_permission
from strongroom.console.accounts import ConsoleAccounts, csrf_token, token_hash

COOKIE_SECURE = "__Host-strongroom-console"
COOKIE_DEV = "strongroom-console"
LOGIN_COOKIE = "strongroom-console-login"
CSRF_FIELD = "csrf_token"
# No inline script or style, nothing from another origin, no framing, forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'{stream}; manifest-src 'self'; worker-src 'self'; font-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
LOOPBACK_NAMES = ("localhost",)

F = TypeVar("F", bound=Callable[..., ResponseReturnValue])


def accounts() -> ConsoleAccounts:
    found: ConsoleAccounts = current_app.extensions["strongroom.console"]
    return found


def plain_http_loopback() -> bool:
    """Tell whether this request came over plain HTTP to a loopback host (local development)."""
    if request.is_secure:
        return False
    host = request.host.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_name() -> str:
    # The __Host- prefix makes the browser insist on Secure, path / and no Domain; a plain-http
    # localhost demo cannot use it, so only there the cookie is a plain one without Secure.
    return COOKIE_DEV if plain_http_loopback() else COOKIE_SECURE


def set_session_cookie(response: BaseResponse, token: str) -> None:
    response.set_cookie(cookie_name(), token, httponly=True, samesite="Strict", path="/",
                        secure=not plain_http_loopback())


def clear_session_cookie(response: BaseResponse) -> None:
    response.delete_cookie(cookie_name(), path="/", httponly=True, samesite="Strict",
                           secure=not plain_http_loopback())


def session_token() -> str:
    return request.cookies.get(cookie_name(), "")


def load_session() -> None:
    """Set ``g.console_user`` (or None) from the session cookie, and the page's CSRF token."""
    token = session_token()
    g.console_user = accounts().resume(token) if token else None
    g.csrf = csrf_token(token) if g.console_user is not None else login_csrf()


def login_csrf() -> str:
    """Return the login form's CSRF token: a double-submit value kept in its own cookie."""
    found = request.cookies.get(LOGIN_COOKIE, "")
    if len(found) == 43:
        return found
    g.new_login_csrf = secrets.token_urlsafe(32)
    return cast(str, g.new_login_csrf)


def check_csrf() -> None:
    """Refuse (403) a state-changing request without this session's CSRF token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get(CSRF_FIELD, "")
    if not sent or not hmac.compare_digest(sent.encode(), g.csrf.encode()):
        abort(403, description="missing or wrong CSRF token: reload the page and try again")
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        abort(403, description="cross-origin form post refused")


def stream_url() -> str | None:
    """Return the websocket stream endpoint on this host (docs/market-data.md), or None if off."""
    port = current_app.config.get("STREAM_PORT")
    if not port:
        return None
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return f"{'wss' if request.is_secure else 'ws'}://{host}:{int(port)}/"


def security_headers(response: Response) -> Response:
    stream = stream_url()
    # The only other origin a page may talk to: this server's own stream endpoint.
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(
        stream=f" {stream}" if stream else "")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" on form posts.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if not request.path.startswith("/console/static/"):
        response.headers["Cache-Control"] = "no-store"
    new_csrf = g.get("new_login_csrf")
    if new_csrf is not None:
        response.set_cookie(LOGIN_COOKIE, new_csrf, httponly=True, samesite="Strict", path="/console",
                            secure=not plain_http_loopback())
    return response


def may(permission: Permission) -> bool:
    user: UserView | None = g.get("console_user")
    return user is not None and has_permission(user.roles, permission)


def is_admin() -> bool:
    user: UserView | None = g.get("console_user")
    return user is not None and Role.ADMIN in user.roles


def opens(permissions: tuple[Permission, ...], admin_only: bool) -> bool:
    """Tell whether the person may open a page needing one of ``permissions`` (or the admin role)."""
    return is_admin() if admin_only else any(may(p) for p in permissions)


def page(*permissions: Permission, admin_only: bool = False) -> Callable[[F], F]:
    """Require a logged-in person holding one of ``permissions`` (else login, or 403).

    ``admin_only`` pages need the admin role itself, as the API's ``secured(admin_only=True)``
    endpoints they call do.
    """
    assert permissions or admin_only, "a page must name a permission or be admin-only"

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if g.get("console_user") is None:
                from flask import redirect, url_for

                return redirect(url_for("console.login", next=request.path))
            if not opens(permissions, admin_only):
                return render_template("error.html", status=403, message=(
                    "Your roles do not include this page.")), 403
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def units(asset_code: str, amount_minor: int | str | None, *, for_input: bool = False) -> str:
    """Format minor units of an asset as a decimal string of whole units (or as minor units).

    The person's ``units`` setting picks: ``whole`` (1.5 USDC) or ``minor`` (1500000). A value
    put into a form field (``for_input``) is always whole units: that is what forms parse.
    """
    if amount_minor is None or amount_minor == "":
        return "-"
    asset = get_asset(asset_code)
    amount = int(amount_minor)
    prefs = g.get("preferences")
    if asset is None or (not for_input and prefs is not None and prefs.units == "minor"):
        return str(amount)
    return asset.format(amount) if amount >= 0 else "-" + asset.format(-amount)


def to_minor(text: str, decimals: int, what: str) -> int:
    """Parse a decimal string of whole units into exact minor units; ValueError says why."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{what} was {text[:40]!r}, must be a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{what} was {text[:40]!r}, must be positive")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what} was {text[:40]!r}: at most {decimals} decimals")
    return int(scaled)


class Notices:
    """One-time messages shown on the next page of a session (the result of a form post).

    Kept in memory, per session token hash, bounded; Flask's cookie session is not used.
    """

    MAX_SESSIONS = 10_000
    MAX_PER_SESSION = 8

    def __init__(self) -> None:
        self._by_session: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def push(self, key: str, kind: str, text: str) -> None:
        with self._lock:
            if key not in self._by_session and len(self._by_session) >= self.MAX_SESSIONS:
                self._by_session.pop(next(iter(self._by_session)))
            queue = self._by_session.setdefault(key, [])
            queue.append((kind, text[:600]))
            del queue[:-self.MAX_PER_SESSION]

    def pop(self, key: str) -> list[tuple[str, str]]:
        with self._lock:
            return self._by_session.pop(key, [])


NOTICES = Notices()


def flash(text: str, kind: str = "ok") -> None:
    NOTICES.push(token_hash(session_token()), kind, text)


def notices() -> list[tuple[str, str]]:
    return NOTICES.pop(token_hash(session_token())) if g.get("console_user") is not None else []
