"""Alerts: once per crossing, per-user rate limit, isolation, stream delivery, signed webhooks, SSRF."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from policies.roles import Role
from strongroom.console import webhooks
from strongroom.console.alert_service import BACKOFF_MS, MAX_ATTEMPTS, AlertService
from strongroom.console.alerts import (
    RATE_LIMIT,
    RATE_WINDOW_MS,
    AlertEvaluator,
    RateLimiter,
    Risk,
    Rule,
    parse_rule,
)
from strongroom.console.codes import ConsoleError
from tests.custody.access.helpers import make_user

USDC = 1_000_000
PERP = "BTC-PERP"
TIMEOUT_S = 30  # bounds a hang only


def _rule(rule_id: int, username: str, body: dict[str, Any]) -> Rule:
    kind, params = parse_rule(body)
    return Rule(rule_id, username, kind, params)


def _mark(price_usdc: int) -> tuple[str, None, dict[str, Any]]:
    return ("mark", None, {"symbol": PERP, "mark": price_usdc * USDC, "index": price_usdc * USDC})


# ------------------------------------------------------------------ the evaluator (pure)


def test_alert_price_cross_fires_once_per_crossing_not_every_tick() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "alice", {"kind": "price_cross", "symbol": PERP, "source": "mark",
                                "direction": "above", "price": "61000"})], {"alice": frozenset({"trader"})})
    ticks = [60_000, 60_500, 61_000, 61_500, 62_000, 60_900, 60_000, 61_200, 61_300, 61_400]
    fired = [f for i, p in enumerate(ticks) for f in ev.observe([_mark(p)], 1_000 + i)]
    assert [f.data["mark"] for f in fired] == ["61000.000000", "61200.000000"]
    assert all(f.username == "alice" and f.rule_id == 1 for f in fired)


def test_alert_price_cross_first_look_on_the_side_does_not_fire() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "alice", {"kind": "price_cross", "symbol": PERP, "source": "last",
                                "direction": "below", "price": "59000.5"})], {"alice": frozenset({"trader"})})
    trade = lambda p: ("trades", None, {"symbol": PERP, "price": p, "qty": 1})  # noqa: E731
    assert ev.observe([trade(58_000 * USDC)], 1) == []  # already below when watching starts
    assert ev.observe([_mark(50_000)], 2) == []  # the mark is not the last price
    assert ev.observe([trade(60_000 * USDC)], 3) == []
    assert ev.observe([trade(59_000_500_000)], 4) == []  # 59000.5 is not below 59000.5
    assert len(ev.observe([trade(59_000_499_999)], 5)) == 1


def test_alert_rate_limit_holds_per_user_and_frees_after_the_window() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "alice", {"kind": "fill"}), _rule(2, "bob", {"kind": "fill"})],
            {"alice": frozenset({"trader"}), "bob": frozenset({"trader"})})
    fill = lambda who: ("fills", who, {"symbol": PERP, "side": "buy", "qty": 1, "price": 1})  # noqa: E731
    first = ev.observe([fill("alice")] * (RATE_LIMIT + 5) + [fill("bob")], 1_000)
    assert [f.username for f in first].count("alice") == RATE_LIMIT
    assert [f.username for f in first].count("bob") == 1  # alice's flood does not silence bob
    assert ev.limiter.suppressed == {"alice": 5}
    assert ev.observe([fill("alice")], 1_000 + RATE_WINDOW_MS - 1) == []
    assert len(ev.observe([fill("alice")], 1_000 + RATE_WINDOW_MS)) == 1


def test_alert_rules_of_one_user_never_fire_for_another_users_events() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "alice", {"kind": "fill"}), _rule(2, "alice", {"kind": "funding"}),
             _rule(3, "alice", {"kind": "withdrawal"})], {"alice": frozenset({"trader"})})
    assert ev.observe([("fills", "bob", {"symbol": PERP}), ("income", "bob", {"type": "funding"}),
                       ("withdrawals", "bob", {"id": "w1", "state": "completed"})], 1) == []
    owner_of = lambda a: a.split("~")[0]  # noqa: E731  (an isolated sub-account's owner)
    assert len(ev.observe([("fills", "alice~BTC-PERP", {"symbol": PERP})], 2, owner_of)) == 1


def test_alert_margin_ratio_and_liquidation_warning_fire_on_crossing() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "alice", {"kind": "margin_ratio", "threshold_ppm": 500_000}),
             _rule(2, "alice", {"kind": "liquidation_warning", "distance_bps": 500})],
            {"alice": frozenset({"trader"})})
    far = Risk(100_000, ((PERP, 60_000 * USDC, 50_000 * USDC),))
    near = Risk(600_000, ((PERP, 60_000 * USDC, 57_500 * USDC),))
    assert ev.observe_risk("alice", far, 1) == []
    kinds = sorted(f.kind for f in ev.observe_risk("alice", near, 2))
    assert kinds == ["liquidation_warning", "margin_ratio"]
    assert ev.observe_risk("alice", near, 3) == []  # still near: no repeat


def test_alert_approval_rule_only_for_the_approving_group() -> None:
    ev = AlertEvaluator()
    ev.load([_rule(1, "t1", {"kind": "approval"}), _rule(2, "c1", {"kind": "approval"})],
            {"t1": frozenset({"treasury"}), "c1": frozenset({"compliance"})})
    pending = ("approvals", None, {"id": "w9", "username": "alice", "group": "treasury", "approvals": 0,
                                   "required": 2})
    assert [f.username for f in ev.observe([pending], 1)] == ["t1"]


@pytest.mark.parametrize("body", [
    {"kind": "price_cross", "symbol": PERP, "source": "mark", "direction": "above", "price": "-1"},
    {"kind": "price_cross", "symbol": PERP, "source": "mark", "direction": "above", "price": 61000},
    {"kind": "price_cross", "symbol": PERP, "source": "index", "direction": "above", "price": "1"},
    {"kind": "price_cross", "symbol": PERP, "source": "mark", "direction": "up", "price": "1"},
    {"kind": "price_cross", "symbol": "BTC PERP", "source": "mark", "direction": "above", "price": "1"},
    {"kind": "price_cross", "symbol": PERP, "source": "mark", "direction": "above", "price": "1.0000001"},
    {"kind": "margin_ratio", "threshold_ppm": 0}, {"kind": "margin_ratio", "threshold_ppm": True},
    {"kind": "liquidation_warning", "distance_bps": 9_999}, {"kind": "fill", "price": "1"},
    {"kind": "fill", "webhook": "yes"}, {"kind": "earthquake"}, [],
])
def test_alert_rule_invalid_refused_with_stable_code(body: Any) -> None:
    with pytest.raises(ConsoleError) as refused:
        parse_rule(body)
    assert int(refused.value.code) == 6101 and refused.value.code.name == "ALERT_INVALID"


# ------------------------------------------------------------------ SSRF


def _public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook", "https://localhost/hook", "https://192.168.1.1/", "https://172.16.0.1/",
    "https://100.64.0.1/", "https://0.0.0.0/", "https://[::ffff:127.0.0.1]/", "https://[fe80::1]/",
    "https://[fd00:ec2::254]/", "https://224.0.0.1/",
])
def test_webhook_destination_private_or_loopback_refused(url: str) -> None:
    # localhost goes through the system resolver: a name that resolves to loopback is refused.
    with pytest.raises(ConsoleError) as refused:
        webhooks.check_destination(url)
    assert refused.value.code.name == "WEBHOOK_DESTINATION_REFUSED" and int(refused.value.code) == 6202


def test_webhook_destination_name_resolving_to_any_private_address_refused() -> None:
    mixed = lambda host, port: ["93.184.216.34", "10.0.0.7"]  # noqa: E731  (one bad answer is enough)
    with pytest.raises(ConsoleError, match=r"10\.0\.0\.7"):
        webhooks.check_destination("https://hooks.example.com/x", resolver=mixed)
    rebinding = lambda host, port: ["127.0.0.1"]  # noqa: E731
    with pytest.raises(ConsoleError, match="loopback"):
        webhooks.check_destination("https://hooks.example.com/x", resolver=rebinding)


def test_webhook_destination_public_https_accepted_and_plain_http_refused() -> None:
    found = webhooks.check_destination("https://hooks.example.com:8443/in?x=1", resolver=_public)
    assert (found.address, found.port, found.path) == ("93.184.216.34", 8443, "/in?x=1")
    with pytest.raises(ConsoleError, match="https"):
        webhooks.check_destination("http://hooks.example.com/in", resolver=_public)
    for bad in ("ftp://x/", "https://user:pw@hooks.example.com/", "hooks.example.com", "https://", 7,
                "https://hooks.example.com/#frag", "https://hooks.example.com:99999/"):
        with pytest.raises(ConsoleError) as refused:
            webhooks.check_destination(bad, resolver=_public)
        assert int(refused.value.code) == 6201, bad


def test_webhook_test_allowlist_admits_only_the_listed_local_receiver() -> None:
    found = webhooks.check_destination("http://127.0.0.1:9/x", allowlist={"127.0.0.1"})
    assert found.address == "127.0.0.1"
    with pytest.raises(ConsoleError):
        webhooks.check_destination("http://127.0.0.2:9/x", allowlist={"127.0.0.1"})


# ------------------------------------------------------------------ the service, end to end


class Receiver:
    """A real local HTTP server that records deliveries and answers with the statuses given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    yield r
    r.close()


def _service(console_app) -> AlertService:
    service: AlertService = console_app.extensions["strongroom.console.alerts"]
    service.allowlist = frozenset({"127.0.0.1"})
    return service


def _set_mark(console_app, price_usdc: int) -> None:
    svc = console_app.extensions["strongroom.exchange"]
    with svc.command() as venue:
        venue.set_mark(PERP, price_usdc * USDC, price_usdc * USDC)


def _people(console_app, clock):
    client = console_app.test_client()
    alice = make_user(console_app, client, clock, "al-alice", {Role.TRADER})
    bob = make_user(console_app, client, clock, "al-bob", {Role.TRADER})
    return alice, bob


def test_alerts_api_isolates_users_rules_notifications_and_webhooks(console_app, clock) -> None:
    alice, bob = _people(console_app, clock)
    r = alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                           "direction": "above", "price": "61000"})
    assert r.status_code == 201, r.get_json()
    rule_id = r.get_json()["rule"]["id"]
    assert r.get_json()["rule"]["price"] == "61000.000000"
    assert bob.get("/api/v1/alerts").get_json() == {"rules": []}
    gone = bob.request("DELETE", f"/api/v1/alerts/{rule_id}")
    assert (gone.status_code, gone.get_json()["code"]) == (404, 6102)  # not bob's: not found
    _service(console_app).step()
    _set_mark(console_app, 60_000)
    _service(console_app).step()
    _set_mark(console_app, 61_500)
    assert _service(console_app).step() == 1
    mine = alice.get("/api/v1/notifications").get_json()["notifications"]
    assert [n["kind"] for n in mine] == ["price_cross"] and "crossed above 61000" in mine[0]["message"]
    assert bob.get("/api/v1/notifications").get_json() == {"notifications": []}
    assert bob.get("/api/v1/alert-webhook").get_json()["code"] == 6203
    bad = alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP})
    assert (bad.status_code, bad.get_json()["error"]) == (400, "alert_invalid")
    assert alice.request("DELETE", f"/api/v1/alerts/{rule_id}").status_code == 200
    assert alice.get("/api/v1/alerts").get_json() == {"rules": []}


def test_alert_approval_rule_refused_for_a_trader(console_app, clock) -> None:
    alice, _ = _people(console_app, clock)
    r = alice.post("/api/v1/alerts", json={"kind": "approval"})
    assert (r.status_code, r.get_json()["code"]) == (400, 6101)


def test_webhook_set_refuses_private_destinations_through_the_api(console_app, clock) -> None:
    alice, _ = _people(console_app, clock)
    for url in ("https://127.0.0.1/x", "https://169.254.169.254/", "https://[::1]/", "https://localhost/"):
        r = alice.post("/api/v1/alert-webhook", json={"url": url}, mfa=True)
        assert (r.status_code, r.get_json()["code"], r.get_json()["error"]) == (
            422, 6202, "webhook_destination_refused"), url
    no_totp = alice.post("/api/v1/alert-webhook", json={"url": "https://x.example/"})
    assert no_totp.status_code == 401


def test_webhook_delivery_signed_hmac_verified_by_a_real_receiver(console_app, clock, receiver) -> None:
    alice, _ = _people(console_app, clock)
    service = _service(console_app)
    r = alice.post("/api/v1/alert-webhook", json={"url": receiver.url}, mfa=True)
    assert r.status_code == 201, r.get_json()
    secret = r.get_json()["secret"]
    assert alice.get("/api/v1/alert-webhook").get_json()["webhook"] == {
        "url": receiver.url, "created_ms": r.get_json()["webhook"]["created_ms"]}  # never the secret again
    with console_app.extensions["strongroom.engine"].connect() as db:
        stored = " ".join(str(v) for row in db.execute(text("SELECT * FROM alert_webhooks")) for v in row)
    assert secret not in stored and receiver.url in stored
    alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                       "direction": "below", "price": "59000", "webhook": True})
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 58_000)
    assert service.step() == 1
    assert len(receiver.got) == 1
    headers, body = receiver.got[0]
    timestamp = int(headers["x-strongroom-webhook-timestamp"])
    assert webhooks.verify(secret.encode(), timestamp, body, headers["x-strongroom-webhook-signature"])
    assert not webhooks.verify(b"another secret", timestamp, body, headers["x-strongroom-webhook-signature"])
    signature = headers["x-strongroom-webhook-signature"]
    assert not webhooks.verify(secret.encode(), timestamp + 1, body, signature)
    payload = json.loads(body)
    assert payload["type"] == "alert" and payload["id"] == headers["idempotency-key"]
    assert payload["alert"]["kind"] == "price_cross" and "crossed below 59000" in payload["alert"]["message"]
    delivered = alice.get("/api/v1/alert-webhook/deliveries").get_json()["deliveries"]
    assert [(d["state"], d["attempts"]) for d in delivered] == [("delivered", 1)]


def test_webhook_failures_retry_with_backoff_then_dead_letter(console_app, clock, receiver) -> None:
    alice, _ = _people(console_app, clock)
    service = _service(console_app)
    assert alice.post("/api/v1/alert-webhook", json={"url": receiver.url}, mfa=True).status_code == 201
    receiver.statuses.extend([500, 302] + [503] * 10)
    alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                       "direction": "above", "price": "61000", "webhook": True})
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 62_000)
    assert service.step() == 1
    for wait_ms in BACKOFF_MS:
        service.step()  # not due yet: no attempt
        clock.advance(wait_ms)
        service.step()
    assert len(receiver.got) == MAX_ATTEMPTS
    assert len({h["idempotency-key"] for h, _ in receiver.got}) == 1  # one delivery, retried
    assert len({b for _, b in receiver.got}) == 1
    (dead,) = alice.get("/api/v1/alert-webhook/deliveries", query={"state": "dead"}).get_json()["deliveries"]
    assert dead["attempts"] == MAX_ATTEMPTS and dead["last_error"] == "HTTP 503"
    clock.advance(10 * BACKOFF_MS[-1])
    service.step()
    assert len(receiver.got) == MAX_ATTEMPTS  # dead letters are not retried


def test_webhook_redirect_not_followed(console_app, clock, receiver) -> None:
    alice, _ = _people(console_app, clock)
    service = _service(console_app)
    assert alice.post("/api/v1/alert-webhook", json={"url": receiver.url}, mfa=True).status_code == 201
    receiver.statuses.append(302)
    alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                       "direction": "above", "price": "61000", "webhook": True})
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 62_000)
    service.step()
    (pending,) = alice.get("/api/v1/alert-webhook/deliveries").get_json()["deliveries"]
    assert pending["state"] == "pending" and "redirects are not followed" in pending["last_error"]
    assert len(receiver.got) == 1  # the Location was not visited


def test_alert_fill_arrives_on_the_private_stream_alerts_channel(console_app, clock) -> None:
    from websockets.sync.client import connect

    from exchange.api.marketdata import FEED_EXTENSION, start_stream_feed
    from exchange.api.stream import ThreadedStreamServer

    alice, _ = _people(console_app, clock)
    service = _service(console_app)
    alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                       "direction": "above", "price": "61000"})
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sra") as directory:
        feed = start_stream_feed(console_app, Path(directory) / "feed.sock")
        server = ThreadedStreamServer(Path(directory) / "feed.sock")
        try:
            token = alice.post("/api/v1/exchange/stream-token").get_json()["token"]
            with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                deadline = time.monotonic() + TIMEOUT_S
                while True:  # the token reaches the stream server with the next feed round
                    ws.send(json.dumps({"op": "auth", "token": token}))
                    answer = json.loads(ws.recv(timeout=TIMEOUT_S))
                    if answer.get("type") == "authenticated" or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert answer["type"] == "authenticated"
                ws.send(json.dumps({"op": "subscribe", "id": 2, "channels": ["alerts"]}))
                assert json.loads(ws.recv(timeout=TIMEOUT_S))["type"] == "subscribed"
                service.step()
                _set_mark(console_app, 60_000)
                service.step()
                _set_mark(console_app, 61_000)
                assert service.step() == 1
                while (m := json.loads(ws.recv(timeout=TIMEOUT_S))).get("channel") != "alerts":
                    pass
                assert m["data"]["kind"] == "price_cross" and m["data"]["data"]["mark"] == "61000.000000"
                assert set(m["data"]) == {"id", "rule_id", "kind", "message", "data", "time_ms"}
        finally:
            server.stop()
            feed.stop()
            console_app.extensions.pop(FEED_EXTENSION)


def test_alert_service_listener_never_blocks_and_bounds_its_queue(console_app, clock) -> None:
    from strongroom.console import alert_service

    service = _service(console_app)
    market = console_app.extensions["strongroom.exchange"].market
    service.step()
    assert service.listen not in market.listeners  # no rules: the read model keeps its cheap path
    alice, _ = _people(console_app, clock)
    rule = alice.post("/api/v1/alerts", json={"kind": "fill"}).get_json()["rule"]
    service.step()
    assert service.listen in market.listeners
    alice.request("DELETE", f"/api/v1/alerts/{rule['id']}")
    service.step()
    assert service.listen not in market.listeners
    for _ in range(alert_service.MAX_QUEUED_BATCHES + 3):
        service.listen([("mark", None, {"symbol": PERP, "mark": 1})])
    assert service.dropped_batches == 3
    service.step()
    assert service.dropped_batches == 3 and not service._queue


def test_alert_notifications_rows_belong_to_their_owner(console_app, clock) -> None:
    from strongroom.console.models import AlertNotification

    alice, bob = _people(console_app, clock)
    for who in (alice, bob):
        who.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                         "direction": "above", "price": "61000"})
    service = _service(console_app)
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 61_000)
    assert service.step() == 2
    with console_app.extensions["strongroom.sessions"]() as session:
        owners = sorted(n.username for n in session.scalars(select(AlertNotification)))
    assert owners == ["al-alice", "al-bob"]
    for who in (alice, bob):
        (mine,) = who.get("/api/v1/notifications").get_json()["notifications"]
        rules = who.get("/api/v1/alerts").get_json()["rules"]
        assert mine["rule_id"] == rules[0]["id"]


def test_console_alerts_page_creates_rules_and_lists_own_notifications(console_app, people, clock) -> None:
    from tests.strongroom.console.conftest import LOCAL, csrf_of, logged_in

    client = logged_in(console_app, people["alice"], clock)
    page = client.get("/console/alerts", base_url=LOCAL).get_data(as_text=True)
    form = {"csrf_token": csrf_of(page), "kind": "price_cross", "symbol": PERP, "source": "mark",
            "direction": "above", "price": "61000", "threshold_pct": "", "distance_pct": ""}
    assert client.post("/console/alerts", base_url=LOCAL, data=form).status_code == 303
    form = {"csrf_token": csrf_of(page), "kind": "margin_ratio", "threshold_pct": "80.5"}
    assert client.post("/console/alerts", base_url=LOCAL, data=form).status_code == 303
    page = client.get("/console/alerts", base_url=LOCAL).get_data(as_text=True)
    assert "alert 2 created" in page and "BTC-PERP mark above 61000.000000" in page and "80.5 %" in page
    service = _service(console_app)
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 61_000)
    assert service.step() == 1
    page = client.get("/console/alerts", base_url=LOCAL).get_data(as_text=True)
    assert "crossed above 61000.000000" in page
    other = logged_in(console_app, people["treasury1"], clock)
    assert "crossed above" not in other.get("/console/alerts", base_url=LOCAL).get_data(as_text=True)
    bad = {"csrf_token": csrf_of(page), "kind": "price_cross", "symbol": PERP, "price": "abc"}
    client.post("/console/alerts", base_url=LOCAL, data=bad)
    assert "6101 alert_invalid" in client.get("/console/alerts", base_url=LOCAL).get_data(as_text=True)


# ------------------------------------------------------------------ documented formats


def _doc_examples(name: str, tag: str = "example") -> dict[str, Any]:
    import re

    doc = (Path(__file__).resolve().parents[3] / "docs" / name).read_text()
    return {k: json.loads(v) for k, v in re.findall(rf"```json {tag}:([a-z-]+)\n(.*?)```", doc, re.S)}


def test_webhook_doc_example_signature_verifies_and_tampering_does_not() -> None:
    found = _doc_examples("console.md")["webhook"]
    secret = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    body = found["body"].encode()
    assert webhooks.verify(secret, found["timestamp_ms"], body, found["signature"])
    assert webhooks.sign(secret, found["timestamp_ms"], body) == found["signature"]
    tampered = body.replace(b"fill", b"fall")
    assert not webhooks.verify(secret, found["timestamp_ms"], tampered, found["signature"])
    assert json.loads(body)["id"] == "alert-7"


def test_alert_doc_examples_parse_and_match_what_is_served(console_app, clock) -> None:
    from tests.exchange.test_marketdata_docs import same_shape

    found = _doc_examples("console.md")
    stream = _doc_examples("market-data.md", "alert-stream")["alert"]
    alice, _ = _people(console_app, clock)
    r = alice.post("/api/v1/alerts", json=found["alert-rule"])
    assert r.status_code == 201, r.get_json()
    service = _service(console_app)
    service.step()
    _set_mark(console_app, 60_000)
    service.step()
    _set_mark(console_app, 61_000)
    assert service.step() == 1
    (served,) = alice.get("/api/v1/notifications").get_json()["notifications"]
    same_shape({k: v for k, v in found["notification"].items() if k != "data"},
               {k: v for k, v in served.items() if k != "data"})
    same_shape(stream["data"], served)
    assert served["message"] == found["notification"]["message"]


def _naive_price_fires(rules: list[Rule], prices: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """The specification: every rule looks at every price of its source; fire on a move onto its side."""
    side: dict[int, bool] = {}
    out = []
    for i, (source, value) in enumerate(prices):
        for r in rules:
            if r.params["source"] != source:
                continue
            above = value >= r.params["price"]
            now = above if r.params["direction"] == "above" else not above
            if side.get(r.id) is False and now:
                out.append((r.id, i))
            side[r.id] = now
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["mark", "last"]), st.sampled_from(["above", "below"]),
                          st.integers(1, 40)), min_size=1, max_size=12),
       st.lists(st.tuples(st.sampled_from(["mark", "last"]), st.integers(0, 41)), min_size=1, max_size=60))
def test_alert_price_index_fires_exactly_what_checking_every_rule_fires(
        specs: list[tuple[str, str, int]], ticks: list[tuple[str, int]]) -> None:
    rules = [_rule(i + 1, f"u{i % 3}", {"kind": "price_cross", "symbol": PERP, "source": source,
                                          "direction": direction, "price": str(price)})
             for i, (source, direction, price) in enumerate(specs)]
    prices = [(source, value * USDC) for source, value in ticks]
    ev = AlertEvaluator(RateLimiter(limit=10**9))
    ev.load(rules, {f"u{i}": frozenset({"trader"}) for i in range(3)})
    fired = []
    for i, (source, value) in enumerate(prices):
        trade = ("trades", None, {"symbol": PERP, "price": value})
        message = _mark(value // USDC) if source == "mark" else trade
        fired += [(f.rule_id, i) for f in ev.observe([message], i)]
    assert sorted(fired) == sorted(_naive_price_fires(rules, prices))  # within a message: any order


def test_alert_rule_added_later_starts_from_the_last_price_seen() -> None:
    ev = AlertEvaluator()
    ev.load([], {})
    assert ev.observe([_mark(60_000)], 1) == []
    ev.load([_rule(5, "alice", {"kind": "price_cross", "symbol": PERP, "source": "mark",
                                "direction": "above", "price": "61000"})], {"alice": frozenset({"trader"})})
    assert len(ev.observe([_mark(61_000)], 2)) == 1  # its side was learnt from 60,000 when it was loaded
    ev.load([_rule(6, "alice", {"kind": "price_cross", "symbol": PERP, "source": "mark",
                                "direction": "above", "price": "60500"})], {"alice": frozenset({"trader"})})
    assert ev.observe([_mark(62_000)], 3) == []  # already above 60,500 when it arrived


def test_alert_server_jobs_evaluate_and_deliver_on_separate_jobs(console_app, clock, receiver) -> None:
    from strongroom.jobs import alert_jobs, webhook_jobs

    alice, _ = _people(console_app, clock)
    service = _service(console_app)
    (evaluate,) = alert_jobs(console_app)
    (deliver,) = webhook_jobs(console_app)
    assert alice.post("/api/v1/alert-webhook", json={"url": receiver.url}, mfa=True).status_code == 201
    alice.post("/api/v1/alerts", json={"kind": "price_cross", "symbol": PERP, "source": "mark",
                                       "direction": "above", "price": "61000", "webhook": True})
    evaluate.run()
    _set_mark(console_app, 60_000)
    evaluate.run()
    _set_mark(console_app, 61_000)
    assert evaluate.run() == 1 and receiver.got == []  # evaluation does not wait for the receiver
    deliver.run()
    assert len(receiver.got) == 1
    assert service.deliver_in_step is False
