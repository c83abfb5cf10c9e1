from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.api_key import ApiKey, Scope, parse_ip_allowlist
from policies.replay_cache import InMemoryReplayCache
from policies.request_signing import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SignedRequest,
    VerifiedKey,
    canonical_query,
    canonical_request,
    sign_request,
    signature_hex,
    verify_signed_request,
)
from policies.results import PolicyError, Refusal, ResultCode

NOW_MS = 1_750_000_000_000
SECRET = "srs_test-secret"
KEY = ApiKey(
    key_id="srk_test",
    owner_user_id="user-1",
    scopes=frozenset({Scope.READ, Scope.TRADE}),
    created_at_ms=NOW_MS - 86_400_000,
)
DOC = Path(__file__).resolve().parents[2] / "docs" / "request-signing.md"


def signed(
    *,
    timestamp_ms: int = NOW_MS,
    method: str = "POST",
    path: str = "/api/v1/orders",
    query: str = "b=2&a=1",
    body: bytes = b'{"qty":1}',
    secret: str = SECRET,
    client_ip: str = "203.0.113.7",
) -> SignedRequest:
    headers = sign_request(
        key_id=KEY.key_id,
        secret=secret,
        timestamp_ms=timestamp_ms,
        method=method,
        path=path,
        query=query,
        body=body,
    )
    return SignedRequest.parse(
        key_id=headers[HEADER_KEY_ID],
        timestamp=headers[HEADER_TIMESTAMP],
        signature=headers[HEADER_SIGNATURE],
        method=method,
        path=path,
        query=query,
        body=body,
        client_ip=client_ip,
    )


def verify(
    request: SignedRequest,
    *,
    key: ApiKey = KEY,
    scope: Scope = Scope.TRADE,
    now_ms: int = NOW_MS,
    cache: InMemoryReplayCache | None = None,
    window_ms: int = 5_000,
) -> Refusal | None:
    return verify_signed_request(
        request,
        VerifiedKey(key, SECRET),
        required_scope=scope,
        now_ms=now_ms,
        replay_cache=cache if cache is not None else InMemoryReplayCache(),
        recv_window_ms=window_ms,
    )


def code_of(refusal: Refusal | None) -> ResultCode | None:
    return None if refusal is None else refusal.code


def test_request_signing_documented_example_recomputes() -> None:
    block = re.search(r"```text\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    text = block.group(1)
    fields = dict(re.findall(r"^(\w+): (.*)$", text, re.M))
    canonical_doc = text.split("canonical:\n", 1)[1].split("\nsignature:", 1)[0]
    canonical = canonical_request(
        fields["key_id"],
        int(fields["timestamp_ms"]),
        fields["method"],
        fields["path"],
        fields["query"],
        fields["body"].encode(),
    )
    assert canonical == canonical_doc
    assert signature_hex(fields["secret"], canonical) == fields["signature"]


def test_request_signing_valid_request_accepted() -> None:
    assert verify(signed()) is None


def test_request_signing_replayed_request_rejected() -> None:
    cache = InMemoryReplayCache()
    request = signed()
    assert verify(request, cache=cache) is None
    assert code_of(verify(request, cache=cache, now_ms=NOW_MS + 10)) is ResultCode.REQUEST_REPLAYED


def test_request_signing_rejected_request_not_remembered() -> None:
    cache = InMemoryReplayCache()
    request = signed()
    assert code_of(verify(request, cache=cache, scope=Scope.WITHDRAW)) is ResultCode.SCOPE_MISSING
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("offset_ms", "expected"),
    [
        (-5_000, None),
        (-5_001, ResultCode.TIMESTAMP_STALE),
        (5_000, None),
        (5_001, ResultCode.TIMESTAMP_IN_FUTURE),
    ],
)
def test_request_signing_receive_window_bounds(offset_ms: int, expected: ResultCode | None) -> None:
    assert code_of(verify(signed(timestamp_ms=NOW_MS + offset_ms))) is expected


def test_request_signing_window_is_configurable() -> None:
    request = signed(timestamp_ms=NOW_MS - 8_000)
    assert code_of(verify(request)) is ResultCode.TIMESTAMP_STALE
    assert verify(request, window_ms=10_000) is None


@pytest.mark.parametrize(
    "tamper",
    [
        {"method": "PUT"},
        {"path": "/api/v1/withdrawals"},
        {"query": "b=2&a=2"},
        {"body": b'{"qty":2}'},
        {"timestamp_ms": NOW_MS + 1},
        {"key_id": "srk_other"},
    ],
)
def test_request_signing_tampered_field_breaks_signature(tamper: dict[str, object]) -> None:
    good = signed()
    fields = {
        "key_id": good.key_id,
        "timestamp_ms": good.timestamp_ms,
        "signature": good.signature,
        "method": good.method,
        "path": good.path,
        "query": good.query,
        "body": good.body,
        "client_ip": good.client_ip,
    }
    fields.update(tamper)
    tampered = SignedRequest(**fields)  # type: ignore[arg-type]
    key = ApiKey("srk_other", "user-1", KEY.scopes, KEY.created_at_ms) if "key_id" in tamper else KEY
    assert code_of(verify(tampered, key=key)) is ResultCode.SIGNATURE_INVALID


def test_request_signing_wrong_secret_rejected() -> None:
    assert code_of(verify(signed(secret="srs_wrong"))) is ResultCode.SIGNATURE_INVALID


def test_request_signing_unknown_key_rejected() -> None:
    refusal = verify_signed_request(
        signed(), None, required_scope=Scope.READ, now_ms=NOW_MS, replay_cache=InMemoryReplayCache()
    )
    assert code_of(refusal) is ResultCode.API_KEY_UNKNOWN


def test_request_signing_revoked_key_rejected() -> None:
    revoked = ApiKey(KEY.key_id, "user-1", KEY.scopes, KEY.created_at_ms, revoked_at_ms=NOW_MS)
    assert code_of(verify(signed(), key=revoked)) is ResultCode.API_KEY_REVOKED


def test_request_signing_expired_key_rejected() -> None:
    expired = ApiKey(KEY.key_id, "user-1", KEY.scopes, KEY.created_at_ms, expires_at_ms=NOW_MS)
    assert code_of(verify(signed(), key=expired)) is ResultCode.API_KEY_EXPIRED


def test_request_signing_ip_outside_allowlist_rejected() -> None:
    allowlisted = ApiKey(
        KEY.key_id,
        "user-1",
        KEY.scopes,
        KEY.created_at_ms,
        ip_allowlist=parse_ip_allowlist(["198.51.100.0/24", "2001:db8::/32"]),
    )
    assert verify(signed(client_ip="198.51.100.9"), key=allowlisted) is None
    assert verify(signed(client_ip="::ffff:198.51.100.10"), key=allowlisted) is None
    assert verify(signed(client_ip="2001:db8::5"), key=allowlisted) is None
    outside = verify(signed(client_ip="203.0.113.7"), key=allowlisted)
    assert code_of(outside) is ResultCode.IP_NOT_ALLOWED


def test_request_signing_missing_scope_rejected() -> None:
    refusal = verify(signed(), scope=Scope.WITHDRAW)
    assert code_of(refusal) is ResultCode.SCOPE_MISSING
    assert refusal is not None and "withdraw" in refusal.message


@pytest.mark.parametrize(
    ("key_id", "timestamp", "signature"),
    [
        (None, "1", "a" * 64),
        ("srk_x", None, "a" * 64),
        ("srk_x", "-1", "a" * 64),
        ("srk_x", "1e3", "a" * 64),
        ("srk_x", "1" * 17, "a" * 64),
        ("srk_x", "1", None),
        ("srk_x", "1", "A" * 64),
        ("srk_x", "1", "a" * 63),
    ],
)
def test_request_signing_malformed_headers_rejected(
    key_id: str | None, timestamp: str | None, signature: str | None
) -> None:
    with pytest.raises(PolicyError) as info:
        SignedRequest.parse(
            key_id=key_id,
            timestamp=timestamp,
            signature=signature,
            method="GET",
            path="/",
            query="",
            body=b"",
            client_ip="127.0.0.1",
        )
    assert info.value.code is ResultCode.AUTH_HEADERS_MALFORMED


def test_canonical_query_sorts_and_normalises_encoding() -> None:
    assert canonical_query("b=2&a=1&a=0") == "a=0&a=1&b=2"
    assert canonical_query("q=a+b") == canonical_query("q=a%20b") == "q=a%20b"
    assert canonical_query("x=%7e&flag") == "flag=&x=~"
    assert canonical_query("") == ""


@settings(max_examples=60)
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=6), st.randoms())
def test_canonical_query_independent_of_order_and_encoding(pairs: list[tuple[str, str]], rnd: object) -> None:
    from urllib.parse import quote, urlencode

    shuffled = list(pairs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    plus_style = urlencode(pairs)
    percent_style = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in shuffled)
    assert canonical_query(plus_style) == canonical_query(percent_style)


def test_canonical_request_path_must_be_absolute() -> None:
    with pytest.raises(PolicyError):
        canonical_request("k", 1, "GET", "api/v1", "", b"")
