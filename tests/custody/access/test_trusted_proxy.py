"""Behind a reverse proxy: which address per-IP limits and API key allowlists see (TRUSTED_PROXY_HOPS).

With 0 trusted hops (the default) X-Forwarded-For is never believed: a client cannot pick another
client's rate-limit bucket, hide from its own, or walk into an IP allowlist by forging it. With N
hops, the client is the Nth X-Forwarded-For entry from the right (each proxy appends its peer), so
anything a client writes to the left of what the proxies appended is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from policies.api_key import Scope
from policies.roles import Role

from .helpers import access, assert_error, make_user

PROXY = "10.0.0.1"  # the ingress, as the app's socket sees it
PER_IP = 3
ME = "/api/v1/me"

AppFactory = Callable[[int], Flask]


@pytest.fixture
def proxied_app(database_url: str, clock: Any, keystore: Any, tmp_path: Path) -> Iterator[AppFactory]:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    built: list[Flask] = []

    def build(hops: int) -> Flask:
        application = create_app(
            {"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore, "TRUSTED_PROXY_HOPS": hops,
             "RATELIMIT_PER_KEY": "100 per minute", "RATELIMIT_PER_IP": f"{PER_IP} per minute"},
            settings=Settings(data_dir=tmp_path / "data", database_url=database_url))
        built.append(application)
        return application

    yield build
    for application in built:
        application.extensions["strongroom.engine"].dispose()


def _anonymous(app: Flask, remote_addr: str, forwarded_for: str | None = None) -> TestResponse:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return app.test_client().get(ME, headers=headers, environ_base={"REMOTE_ADDR": remote_addr})


def test_rate_limit_forged_forwarded_for_without_trusted_proxy_stays_in_the_socket_bucket(
    proxied_app: AppFactory,
) -> None:
    app = proxied_app(0)
    # A client rotating forged X-Forwarded-For values is still counted as itself ...
    statuses = [_anonymous(app, "198.51.100.9", f"203.0.113.{i}").status_code for i in range(PER_IP + 1)]
    assert statuses == [401] * PER_IP + [429]
    # ... and cannot spend the bucket of the address it names: that client is untouched.
    assert _anonymous(app, "203.0.113.0").status_code == 401


def test_rate_limit_one_trusted_hop_gives_two_clients_behind_one_proxy_their_own_buckets(
    proxied_app: AppFactory,
) -> None:
    app = proxied_app(1)
    statuses = [_anonymous(app, PROXY, "198.51.100.1").status_code for _ in range(PER_IP + 1)]
    assert statuses == [401] * PER_IP + [429]
    assert _anonymous(app, PROXY, "198.51.100.2").status_code == 401, "a second client shares no bucket"
    assert _anonymous(app, PROXY, "198.51.100.1").status_code == 429


def test_rate_limit_one_trusted_hop_ignores_entries_a_client_forges_to_the_left(
    proxied_app: AppFactory,
) -> None:
    app = proxied_app(1)
    # The proxy appends the real peer (198.51.100.1) after whatever the client sent.
    statuses = [_anonymous(app, PROXY, f"203.0.113.{i}, 198.51.100.1").status_code
                for i in range(PER_IP + 1)]
    assert statuses == [401] * PER_IP + [429]
    assert _anonymous(app, PROXY, "203.0.113.0").status_code == 401, "the forged address kept its own bucket"


def test_rate_limit_two_trusted_hops_count_the_client_the_outer_proxy_saw(proxied_app: AppFactory) -> None:
    app = proxied_app(2)  # a cloud load balancer (appends the client) then the ingress (appends the LB)
    statuses = [_anonymous(app, PROXY, f"203.0.113.{i}, 198.51.100.1, 10.0.0.7").status_code
                for i in range(PER_IP + 1)]
    assert statuses == [401] * PER_IP + [429]
    assert _anonymous(app, PROXY, "198.51.100.2, 10.0.0.7").status_code == 401


def test_rate_limit_trusted_hop_without_forwarded_header_counts_the_socket_address(
    proxied_app: AppFactory,
) -> None:
    app = proxied_app(1)  # a request that bypassed the proxy carries no X-Forwarded-For
    statuses = [_anonymous(app, "198.51.100.5").status_code for _ in range(PER_IP + 1)]
    assert statuses == [401] * PER_IP + [429]
    assert _anonymous(app, PROXY, "198.51.100.5").status_code == 429, "the same client through the proxy"


@pytest.mark.parametrize("hops", [-1, 6, "1", True, 1.0])
def test_create_app_invalid_trusted_proxy_hops_refused(proxied_app: AppFactory, hops: Any) -> None:
    with pytest.raises(ValueError, match="TRUSTED_PROXY_HOPS"):
        proxied_app(hops)


def test_ip_allowlist_behind_trusted_proxy_sees_the_client_and_not_a_forged_entry(
    proxied_app: AppFactory, clock: Any,
) -> None:
    app = proxied_app(1)
    signed = make_user(app, app.test_client(), clock, "carol", {Role.TRADER}, mfa=False)
    key = access(app).users.create_api_key("carol", frozenset({Scope.READ}), ip_allowlist=["198.51.100.0/24"])
    signed.key_id, signed.secret = key.credentials.key_id, key.credentials.secret
    inside = signed.get(ME, remote_addr=PROXY, headers={"X-Forwarded-For": "198.51.100.4"})
    assert inside.status_code == 200
    forged = signed.get(ME, remote_addr=PROXY, headers={"X-Forwarded-For": "198.51.100.4, 192.0.2.66"})
    assert_error(forged, 403, "ip_not_allowed")


def test_ip_allowlist_without_trusted_proxy_ignores_forwarded_for(
    proxied_app: AppFactory, clock: Any,
) -> None:
    app = proxied_app(0)
    signed = make_user(app, app.test_client(), clock, "carol", {Role.TRADER}, mfa=False)
    key = access(app).users.create_api_key("carol", frozenset({Scope.READ}), ip_allowlist=["198.51.100.0/24"])
    signed.key_id, signed.secret = key.credentials.key_id, key.credentials.secret
    forged = signed.get(ME, remote_addr="192.0.2.66", headers={"X-Forwarded-For": "198.51.100.4"})
    assert_error(forged, 403, "ip_not_allowed")


def test_settings_trusted_proxy_hops_default_zero_and_read_from_env(tmp_path: Path) -> None:
    from strongroom.settings import Settings

    base = {"STRONGROOM_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).trusted_proxy_hops == 0
    assert Settings.from_env({**base, "STRONGROOM_TRUSTED_PROXY_HOPS": "2"}).trusted_proxy_hops == 2


@pytest.mark.parametrize("value", ["-1", "6", "one", "1.5"])
def test_settings_invalid_trusted_proxy_hops_refused_naming_the_variable(tmp_path: Path, value: str) -> None:
    from strongroom.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="STRONGROOM_TRUSTED_PROXY_HOPS"):
        Settings.from_env({"STRONGROOM_DATA_DIR": str(tmp_path), "STRONGROOM_TRUSTED_PROXY_HOPS": value})


def test_create_app_takes_trusted_proxy_hops_from_settings(database_url: str, clock: Any, keystore: Any,
                                                           tmp_path: Path) -> None:
    from strongroom.app import create_app
    from strongroom.settings import Settings

    app = create_app({"TESTING": True, "CLOCK": clock, "KEYSTORE": keystore},
                     settings=Settings(data_dir=tmp_path / "data", database_url=database_url,
                                       trusted_proxy_hops=1))
    try:
        @app.get("/whoami-test")
        def whoami() -> str:
            from flask import request
            return f"{request.remote_addr} {request.scheme}"

        seen = app.test_client().get("/whoami-test", environ_base={"REMOTE_ADDR": PROXY},
                                     headers={"X-Forwarded-For": "198.51.100.3",
                                              "X-Forwarded-Proto": "https"})
        assert seen.get_data(as_text=True) == "198.51.100.3 https"
    finally:
        app.extensions["strongroom.engine"].dispose()
