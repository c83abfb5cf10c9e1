"""API key metadata and the checks on it: state, IP allowlist and scopes.

Persistence (hashing or encrypting the secret, listing, revoking) belongs
to the custody store; this module decides, given a key's metadata, whether
a request may use it.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policies.identifier import check_identifier
from policies.results import PolicyError, Refusal, ResultCode

KEY_ID_PREFIX = "srk_"
SECRET_PREFIX = "srs_"  # noqa: S105 - a public prefix, not a secret
KEY_ID_RANDOM_BYTES = 12
SECRET_RANDOM_BYTES = 32
MAX_ALLOWLIST_ENTRIES = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Scope(enum.StrEnum):
    """What a key may be used for; each scope is granted explicitly."""

    READ = "read"
    TRADE = "trade"
    WITHDRAW = "withdraw"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's metadata. An empty `ip_allowlist` allows any address."""

    key_id: str
    owner_user_id: str
    scopes: frozenset[Scope]
    created_at_ms: int
    expires_at_ms: int | None = None
    revoked_at_ms: int | None = None
    ip_allowlist: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        check_identifier(self.key_id, "key_id", ResultCode.API_KEY_INVALID)
        check_identifier(self.owner_user_id, "owner_user_id", ResultCode.API_KEY_INVALID)
        if not self.scopes:
            raise PolicyError(ResultCode.API_KEY_INVALID, "scopes must name at least one scope")
        if self.expires_at_ms is not None and self.expires_at_ms <= self.created_at_ms:
            raise PolicyError(
                ResultCode.API_KEY_INVALID,
                f"expires_at_ms was {self.expires_at_ms}, must be after created_at_ms {self.created_at_ms}",
            )


@dataclass(frozen=True, slots=True)
class ApiKeyCredentials:
    """A new key id and its secret; the secret is shown to the user once."""

    key_id: str
    secret: str


def new_api_key_credentials(
    token_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> ApiKeyCredentials:
    """Generate a fresh key id and secret (randomness injectable for tests)."""
    key_id = KEY_ID_PREFIX + _b64(token_bytes(KEY_ID_RANDOM_BYTES))
    return ApiKeyCredentials(key_id, SECRET_PREFIX + _b64(token_bytes(SECRET_RANDOM_BYTES)))


def parse_ip_allowlist(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse addresses and CIDRs ("10.0.0.0/8", "2001:db8::1"); raise on bad entries."""
    networks: list[IPNetwork] = []
    for index, entry in enumerate(entries):
        try:
            # strict: "10.0.0.1/8" has host bits set and is probably a typo.
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise PolicyError(
                ResultCode.API_KEY_INVALID, f"ip_allowlist[{index}] was {entry!r}: {exc}"
            ) from None
    if len(networks) > MAX_ALLOWLIST_ENTRIES:
        raise PolicyError(
            ResultCode.API_KEY_INVALID,
            f"ip_allowlist has {len(networks)} entries, at most {MAX_ALLOWLIST_ENTRIES}",
        )
    return tuple(networks)


def check_key_state(key: ApiKey, now_ms: int) -> Refusal | None:
    """Refuse revoked and expired keys."""
    if key.revoked_at_ms is not None and key.revoked_at_ms <= now_ms:
        return Refusal(ResultCode.API_KEY_REVOKED, f"key {key.key_id} was revoked at {key.revoked_at_ms} ms")
    if key.expires_at_ms is not None and key.expires_at_ms <= now_ms:
        return Refusal(ResultCode.API_KEY_EXPIRED, f"key {key.key_id} expired at {key.expires_at_ms} ms")
    return None


def check_client_ip(key: ApiKey, client_ip: str) -> Refusal | None:
    """Refuse a client address outside the key's allowlist (if it has one)."""
    if not key.ip_allowlist:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return Refusal(ResultCode.IP_NOT_ALLOWED, f"client address was {client_ip!r}, not an IP")
    # A dual-stack server may see IPv4 clients as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in key.ip_allowlist):
        return None
    return Refusal(
        ResultCode.IP_NOT_ALLOWED, f"client address {address} is not in key {key.key_id} allowlist"
    )


def check_scope(key: ApiKey, required: Scope) -> Refusal | None:
    if required in key.scopes:
        return None
    held = ", ".join(sorted(key.scopes))
    return Refusal(
        ResultCode.SCOPE_MISSING,
        f"key {key.key_id} has scopes [{held}], this request needs {required.value}",
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
