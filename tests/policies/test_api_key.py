from __future__ import annotations

import pytest

from policies.api_key import (
    KEY_ID_PREFIX,
    SECRET_PREFIX,
    ApiKey,
    Scope,
    check_client_ip,
    new_api_key_credentials,
    parse_ip_allowlist,
)
from policies.results import PolicyError, ResultCode


def test_api_key_credentials_are_prefixed_and_random() -> None:
    first, second = new_api_key_credentials(), new_api_key_credentials()
    assert first.key_id.startswith(KEY_ID_PREFIX)
    assert first.secret.startswith(SECRET_PREFIX)
    assert first != second


def test_api_key_credentials_use_injected_randomness() -> None:
    creds = new_api_key_credentials(lambda n: b"\x00" * n)
    assert creds.key_id == "srk_AAAAAAAAAAAAAAAA"


def test_api_key_ip_allowlist_host_bits_set_rejected() -> None:
    with pytest.raises(PolicyError) as info:
        parse_ip_allowlist(["10.0.0.1/8"])
    assert info.value.code is ResultCode.API_KEY_INVALID
    assert "ip_allowlist[0]" in info.value.message


def test_api_key_ip_allowlist_garbage_client_ip_refused() -> None:
    key = ApiKey("srk_a", "u", frozenset({Scope.READ}), 0, ip_allowlist=parse_ip_allowlist(["10.0.0.0/8"]))
    refusal = check_client_ip(key, "not-an-ip")
    assert refusal is not None and refusal.code is ResultCode.IP_NOT_ALLOWED


def test_api_key_without_scopes_rejected() -> None:
    with pytest.raises(PolicyError, match="at least one scope"):
        ApiKey("srk_a", "u", frozenset(), 0)


def test_api_key_expiring_before_creation_rejected() -> None:
    with pytest.raises(PolicyError, match="expires_at_ms was 5"):
        ApiKey("srk_a", "u", frozenset({Scope.READ}), 10, expires_at_ms=5)
