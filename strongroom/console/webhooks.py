"""Signed alert webhooks: the signature, SSRF-safe destinations, one delivery attempt.

Signature (docs/console.md, "Webhooks"): ``X-Strongroom-Webhook-Signature: v1=<hex>`` where
hex is HMAC-SHA256, keyed by the person's webhook secret, over ``<timestamp_ms>.<body>``
(``X-Strongroom-Webhook-Timestamp``); ``Idempotency-Key`` is the same on every retry of one
delivery. A receiver recomputes it, compares in constant time and rejects old timestamps.

Destinations: https only; the host is resolved once and *every* address it resolves to must
be public (not private, loopback, link-local, the cloud metadata address, multicast,
reserved, unspecified, shared or an IPv4-mapped form of one of these); the connection then
goes to that checked address (no second lookup a rebinding DNS server could answer
differently), and redirects are never followed (a 3xx is a failed attempt). An explicit
allowlist of addresses (``ALERT_WEBHOOK_TEST_ALLOWLIST``, tests and local development only)
admits a local receiver, over plain http too.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from strongroom.console.codes import ConsoleCode, ConsoleError

HEADER_SIGNATURE: Final = "X-Strongroom-Webhook-Signature"
HEADER_TIMESTAMP: Final = "X-Strongroom-Webhook-Timestamp"
HEADER_IDEMPOTENCY: Final = "Idempotency-Key"
SIGNATURE_VERSION: Final = "v1"
MAX_URL_LEN: Final = 512
TIMEOUT_S: Final = 5.0
MAX_RESPONSE_BYTES: Final = 4_096
METADATA_ADDRESSES: Final = frozenset({ipaddress.ip_address("169.254.169.254"),
                                       ipaddress.ip_address("fd00:ec2::254")})

Resolver = Callable[[str, int], list[str]]


def sign(secret: bytes, timestamp_ms: int, body: bytes) -> str:
    """Return the signature header value of ``body`` sent at ``timestamp_ms``."""
    mac = hmac.new(secret, str(timestamp_ms).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def verify(secret: bytes, timestamp_ms: int, body: bytes, header: str) -> bool:
    """Tell whether ``header`` is the signature of ``body`` at ``timestamp_ms`` (constant time)."""
    return hmac.compare_digest(sign(secret, timestamp_ms, body).encode(), header.encode())


def system_resolver(host: str, port: int) -> list[str]:
    """Return every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked destination: the URL's parts and the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _refused(message: str) -> ConsoleError:
    return ConsoleError(ConsoleCode.WEBHOOK_DESTINATION_REFUSED, message)


def parse_url(url: object) -> tuple[str, str, int, str]:
    """Return scheme, host, port and path of a webhook URL, or refuse it (6201)."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LEN or not url.isascii() \
            or any(c.isspace() for c in url):
        raise ConsoleError(ConsoleCode.WEBHOOK_URL_INVALID,
                           f"url must be an absolute URL of at most {MAX_URL_LEN} ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConsoleError(ConsoleCode.WEBHOOK_URL_INVALID, "url is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConsoleError(ConsoleCode.WEBHOOK_URL_INVALID, "url must be https://host/path")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ConsoleError(ConsoleCode.WEBHOOK_URL_INVALID, "url must not carry credentials or a fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def forbidden_reason(address: str) -> str | None:
    """Return why ``address`` may not receive a webhook, or None if it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip in METADATA_ADDRESSES:
        return "the cloud metadata address"
    for name in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved",
                 "is_unspecified"):
        if getattr(ip, name):
            return name[3:].replace("_", "-")
    if ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (carrier-grade NAT)"
    if not ip.is_global:
        return "not globally routable"
    return None


def check_destination(url: object, *, resolver: Resolver = system_resolver,
                      allowlist: Collection[str] = ()) -> Destination:
    """Resolve and check a webhook URL; return where to connect, or refuse (6201/6202)."""
    scheme, host, port, path = parse_url(url)
    try:
        literal = ipaddress.ip_address(host)
        addresses = [str(literal)]
    except ValueError:
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError):
            raise _refused(f"host {host[:80]!r} does not resolve") from None
    if not addresses:
        raise _refused(f"host {host[:80]!r} does not resolve")
    allowed = [a for a in addresses if a in allowlist]
    if allowed and len(allowed) == len(addresses):
        return Destination(scheme, host, port, path, allowed[0])
    if scheme != "https":
        raise _refused("webhooks go to https:// URLs only")
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            raise _refused(f"host {host[:80]!r} resolves to {address} ({reason}): webhooks go to public "
                           "addresses only")
    return Destination(scheme, host, port, path, addresses[0])


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt."""

    ok: bool
    error: str | None


def deliver(destination: Destination, body: bytes, headers: dict[str, str], *,
            timeout_s: float = TIMEOUT_S, tls: ssl.SSLContext | None = None) -> Attempt:
    """POST ``body`` to the checked address (never re-resolved); 2xx is success, anything else not."""
    try:
        raw = socket.create_connection((destination.address, destination.port), timeout=timeout_s)
    except OSError as exc:
        return Attempt(False, f"connect failed: {type(exc).__name__}")
    sock: socket.socket = raw
    try:
        if destination.scheme == "https":
            sock = (tls or ssl.create_default_context()).wrap_socket(raw, server_hostname=destination.host)
        conn = http.client.HTTPConnection(destination.host, destination.port, timeout=timeout_s)
        conn.sock = sock  # already connected to the checked address: http.client will not connect
        conn.request("POST", destination.path, body=body, headers={
            **headers, "Content-Type": "application/json", "User-Agent": "strongroom-webhook/1"})
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        status = response.status
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Attempt(False, f"request failed: {type(exc).__name__}")
    finally:
        sock.close()
    if 200 <= status < 300:
        return Attempt(True, None)
    return Attempt(False, f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else ""))
