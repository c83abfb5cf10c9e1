"""HMAC-SHA256 request signing for the REST API.

The client signs a canonical string built from the key id, a millisecond
timestamp, the method, the path, the sorted query and the SHA-256 of the
body; `docs/request-signing.md` specifies it with a worked example. The
server rebuilds the same string, compares in constant time, rejects
timestamps outside the receive window and remembers signatures so that a
captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from policies.api_key import ApiKey, Scope, check_client_ip, check_key_state, check_scope
from policies.identifier import check_identifier
from policies.replay_cache import ReplayCache
from policies.results import PolicyError, Refusal, ResultCode

SIGNATURE_ALGORITHM = "STRONGROOM-HMAC-SHA256"
HEADER_KEY_ID = "X-Strongroom-Key"
HEADER_TIMESTAMP = "X-Strongroom-Timestamp"
HEADER_SIGNATURE = "X-Strongroom-Signature"
DEFAULT_RECV_WINDOW_MS = 5_000
MAX_RECV_WINDOW_MS = 60_000
MAX_TIMESTAMP_DIGITS = 16
SIGNATURE_HEX_CHARS = 64
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# Unreserved characters of RFC 3986 stay as they are; everything else is
# percent-encoded, so both sides agree however the client encoded it.
_UNRESERVED = "-_.~"


def canonical_path(path: str) -> str:
    """Percent-encode the decoded request path (as the server routes it)."""
    if not path.startswith("/"):
        raise PolicyError(ResultCode.AUTH_HEADERS_MALFORMED, f"path was {path!r}, must start /")
    return quote(path, safe="/" + _UNRESERVED)


def canonical_query(query: str) -> str:
    """Decode the raw query string, re-encode each pair, and sort the pairs."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_encode(unquote_plus(name)), _encode(unquote_plus(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(key_id: str, timestamp_ms: int, method: str, path: str, query: str, body: bytes) -> str:
    """Return the exact string that is signed, lines joined by "\\n"."""
    if method.upper() not in METHODS:
        raise PolicyError(ResultCode.AUTH_HEADERS_MALFORMED, f"method was {method!r}")
    return "\n".join(
        (
            SIGNATURE_ALGORITHM,
            key_id,
            str(timestamp_ms),
            method.upper(),
            canonical_path(path),
            canonical_query(query),
            hashlib.sha256(body).hexdigest(),
        )
    )


def signature_hex(secret: str, canonical: str) -> str:
    """Return lowercase hex HMAC-SHA256 of `canonical` keyed by the UTF-8 secret."""
    return hmac.new(secret.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_request(
    *,
    key_id: str,
    secret: str,
    timestamp_ms: int,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
) -> dict[str, str]:
    """Return the three headers a client adds to sign a request."""
    canonical = canonical_request(key_id, timestamp_ms, method, path, query, body)
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: str(timestamp_ms),
        HEADER_SIGNATURE: signature_hex(secret, canonical),
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as the server received it, with its parsed auth headers."""

    key_id: str
    timestamp_ms: int
    signature: str
    method: str
    path: str
    query: str
    body: bytes
    client_ip: str

    @classmethod
    def parse(
        cls,
        *,
        key_id: str | None,
        timestamp: str | None,
        signature: str | None,
        method: str,
        path: str,
        query: str,
        body: bytes,
        client_ip: str,
    ) -> SignedRequest:
        """Parse the auth header values; raise `PolicyError(auth_headers_malformed)`."""
        code = ResultCode.AUTH_HEADERS_MALFORMED
        check_identifier(key_id, HEADER_KEY_ID, code)
        if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()):
            raise PolicyError(code, f"{HEADER_TIMESTAMP} was {timestamp!r}, must be ms digits")
        if len(timestamp) > MAX_TIMESTAMP_DIGITS:
            raise PolicyError(code, f"{HEADER_TIMESTAMP} has more than {MAX_TIMESTAMP_DIGITS} digits")
        if signature is None or len(signature) != SIGNATURE_HEX_CHARS or not _is_hex(signature):
            raise PolicyError(code, f"{HEADER_SIGNATURE} must be 64 lowercase hex characters")
        assert key_id is not None
        return cls(key_id, int(timestamp), signature, method, path, query, body, client_ip)


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """What the server knows about the key a request names."""

    key: ApiKey
    secret: str


def verify_signed_request(
    request: SignedRequest,
    known: VerifiedKey | None,
    *,
    required_scope: Scope,
    now_ms: int,
    replay_cache: ReplayCache,
    recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
) -> Refusal | None:
    """Authenticate and authorize `request`; return why not, or None to accept.

    Checks in order: key known, timestamp in window, signature, key state, IP
    allowlist, scope, and last the replay cache, so only requests that pass
    every other check are remembered.
    """
    assert 0 < recv_window_ms <= MAX_RECV_WINDOW_MS, f"recv_window_ms was {recv_window_ms}"
    if known is None or known.key.key_id != request.key_id:
        return Refusal(ResultCode.API_KEY_UNKNOWN, f"key {request.key_id} is not known")
    refusal = (
        _check_timestamp(request.timestamp_ms, now_ms, recv_window_ms)
        or _check_signature(request, known.secret)
        or check_key_state(known.key, now_ms)
        or check_client_ip(known.key, request.client_ip)
        or check_scope(known.key, required_scope)
    )
    if refusal is not None:
        return refusal
    # Remember until just after the last instant this timestamp is accepted.
    expires_at_ms = request.timestamp_ms + recv_window_ms + 1
    if not replay_cache.remember(f"{request.key_id}:{request.signature}", expires_at_ms, now_ms):
        return Refusal(ResultCode.REQUEST_REPLAYED, "this signed request was already used")
    return None


def timestamp_refusal(timestamp_ms: int, now_ms: int,
                      recv_window_ms: int = DEFAULT_RECV_WINDOW_MS) -> Refusal | None:
    """Return why a request stamped ``timestamp_ms`` is outside the receive window, or None.

    Pure and cheap: callers run it before looking the key up, so requests that queued
    past the window (overload) or replays of old ones cost no key lookup at all.
    """
    return _check_timestamp(timestamp_ms, now_ms, recv_window_ms)


def _check_timestamp(timestamp_ms: int, now_ms: int, recv_window_ms: int) -> Refusal | None:
    if now_ms - timestamp_ms > recv_window_ms:
        return Refusal(
            ResultCode.TIMESTAMP_STALE,
            f"timestamp was {timestamp_ms} ms, {now_ms - timestamp_ms} ms before server time; "
            f"at most {recv_window_ms} ms allowed",
        )
    if timestamp_ms - now_ms > recv_window_ms:
        return Refusal(
            ResultCode.TIMESTAMP_IN_FUTURE,
            f"timestamp was {timestamp_ms} ms, {timestamp_ms - now_ms} ms after server time; "
            f"at most {recv_window_ms} ms allowed",
        )
    return None


def _check_signature(request: SignedRequest, secret: str) -> Refusal | None:
    try:
        canonical = canonical_request(
            request.key_id,
            request.timestamp_ms,
            request.method,
            request.path,
            request.query,
            request.body,
        )
    except PolicyError as exc:
        return exc.refusal
    expected = signature_hex(secret, canonical)
    if hmac.compare_digest(expected.encode("utf-8"), request.signature.encode("utf-8")):
        return None
    return Refusal(ResultCode.SIGNATURE_INVALID, "signature does not match the request")


def _encode(text: str) -> str:
    return quote(text, safe=_UNRESERVED)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
