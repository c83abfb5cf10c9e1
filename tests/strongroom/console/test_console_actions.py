"""Console actions go through the API's own views: same permission, MFA, idempotency and refusals."""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.access.users import parse_roles
from policies.signature_scheme import ed25519_public_bytes
from tests.strongroom.console.conftest import LOCAL, csrf_of, logged_in

USDC = 1_000_000
BTC = 10**8


def notices(html):
    return re.findall(r'class="notice[^>]*>([^<]*)', html)


def _page(client, path):
    response = client.get(path, base_url=LOCAL)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def _post(client, path, page_html, **form):
    response = client.post(path, base_url=LOCAL, data={"csrf_token": csrf_of(page_html), **form})
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    return _page(client, response.headers["Location"])


def _fund(console_app, username):
    ledger = console_app.extensions["strongroom.ledger"]
    from strongroom.demo import seed_demo

    seed_demo(ledger)  # alice holds 1.5 BTC, 20 ETH and 250,000 USDC in her wallet
    svc = console_app.extensions["strongroom.exchange"]
    with svc.command() as venue:
        venue.set_mark("BTC-PERP", 60_000 * USDC, 60_000 * USDC)
    return svc


def test_trader_moves_collateral_places_and_cancels_order(console_app, people, clock):
    _fund(console_app, "alice")
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/trade?symbol=BTC-PERP")
    html = _post(client, "/console/trade/collateral", html, direction="deposit", amount="10000",
                 symbol="BTC-PERP")
    assert "collateral deposit: 10000.000000 USDC" in html or "collateral deposit: 10000" in html
    html = _post(client, "/console/trade/orders", html, symbol="BTC-PERP", id="t1", side="buy", type="limit",
                 qty="1", price="58000", tif="GTC", margin_mode="cross")
    assert "order t1 placed" in html, notices(html)
    assert 'data-order-id="t1"' in html
    html = _post(client, "/console/trade/orders/BTC-PERP/t1/cancel", html)
    assert "order t1 cancelled" in html and 'data-order-id="t1"' not in html


def test_order_refusal_shows_the_api_error_code(console_app, people, clock):
    _fund(console_app, "alice")
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/trade?symbol=BTC-PERP")
    html = _post(client, "/console/trade/orders", html, symbol="BTC-PERP", id="t2", side="buy", type="limit",
                 qty="1", price="58000", tif="GTC", margin_mode="cross")
    # No collateral moved to the exchange: refused with the API's own code and message.
    assert "2005 unknown_account" in html, notices(html)


def test_withdrawal_without_totp_refused_with_totp_accepted(console_app, people, clock):
    _fund(console_app, "alice")
    access = console_app.extensions["strongroom.access"]
    access.withdrawals.add_whitelist("alice", "ETH", "0x" + "ab" * 20, "cold storage")
    clock.advance(2 * 86_400_000)  # past the whitelist timelock
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/wallet")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)
    form = {"asset": "ETH", "amount": "0.5", "destination": "0x" + "ab" * 20, "idempotency_key": key}
    refused = _post(client, "/console/wallet/withdrawals", html, code="", **form)
    assert "mfa_required" in refused
    code = people["alice"].totp.at(clock() // 1000 + 30)
    done = _post(client, "/console/wallet/withdrawals", html, code=code, **form)
    assert "0.500000000000000000 ETH: approved" in done or "ETH: approved" in done, \
        notices(done)
    # The same form posted twice (a double click) is one withdrawal: the Idempotency-Key.
    again = _post(client, "/console/wallet/withdrawals", html, code=code, **form)
    assert again.count('data-state="') == 1


def test_treasury_approval_signed_by_registered_device_key_counts(console_app, people, clock):
    _fund(console_app, "alice")
    access = console_app.extensions["strongroom.access"]
    access.users.create_user("treasury2", parse_roles(["treasury"]), actor="test")
    access.withdrawals.add_whitelist("alice", "BTC", "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh", "mine")
    clock.advance(2 * 86_400_000)
    from custody.withdrawals.service import WithdrawalInput

    withdrawal = access.withdrawals.create(access.users.get_user("alice"), WithdrawalInput(
        asset="BTC", amount_minor=BTC // 5, destination="bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
        source_wallet="hot"), "wd_" + "1" * 32)
    assert withdrawal.state == "pending_approval"
    device = Ed25519PrivateKey.generate()
    t = clock() // 1000
    client = logged_in(console_app, people["treasury1"], clock)
    html = _page(client, "/console/treasury")
    html = _post(client, "/console/treasury/device", html, key_id="browser-test",
                 public_key=ed25519_public_bytes(device).hex(), code=people["treasury1"].totp.at(t + 30))
    assert "approval devices" in html
    form = re.search(r'action="/console/treasury/withdrawals/(wd_1+)/approve"'
                     r'[^>]*data-digest="([0-9a-f]{64})"[^>]*'
                     r'data-signed-at="(\d+)" data-expires-at="(\d+)"', html)
    assert form, "no approval form with a digest"
    signature = device.sign(bytes.fromhex(form.group(2)))
    clock.advance(30_000)
    html = _post(client, f"/console/treasury/withdrawals/{form.group(1)}/approve", html,
                 signed_at_ms=form.group(3), expires_at_ms=form.group(4), key_id="browser-test",
                 signature=signature.hex(), code=people["treasury1"].totp.at(clock() // 1000 + 30))
    assert "approved: withdrawal is now pending_approval" in html, notices(html)
    stored = access.withdrawals.get(withdrawal.id)
    assert [a[1] for a in stored.approvals] == ["treasury1"]
    assert base64  # the approval bytes went through the API's base64 field


def test_approval_with_forged_signature_refused(console_app, people, clock):
    _fund(console_app, "alice")
    access = console_app.extensions["strongroom.access"]
    access.withdrawals.add_whitelist("alice", "BTC", "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh", "mine")
    clock.advance(2 * 86_400_000)
    from custody.withdrawals.service import WithdrawalInput

    access.withdrawals.create(access.users.get_user("alice"), WithdrawalInput(
        asset="BTC", amount_minor=BTC // 5, destination="bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
        source_wallet="hot"), "wd_" + "2" * 32)
    device = Ed25519PrivateKey.generate()
    client = logged_in(console_app, people["treasury1"], clock)
    html = _page(client, "/console/treasury")
    html = _post(client, "/console/treasury/device", html, key_id="browser-test",
                 public_key=ed25519_public_bytes(device).hex(),
                 code=people["treasury1"].totp.at(clock() // 1000 + 30))
    form = re.search(r'data-signed-at="(\d+)" data-expires-at="(\d+)"', html)
    clock.advance(30_000)
    html = _post(client, f"/console/treasury/withdrawals/wd_{'2' * 32}/approve", html,
                 signed_at_ms=form.group(1), expires_at_ms=form.group(2), key_id="browser-test",
                 signature=Ed25519PrivateKey.generate().sign(b"x" * 32).hex(),
                 code=people["treasury1"].totp.at(clock() // 1000 + 30))
    assert "approved:" not in html and "signature" in html.lower()
    assert not access.withdrawals.get("wd_" + "2" * 32).approvals


def test_admin_creates_user_with_roles_first_key_secret_shown_once(console_app, people, clock):
    client = logged_in(console_app, people["admin"], clock)
    html = _page(client, "/console/admin")
    response = client.post("/console/admin/users", base_url=LOCAL, data={
        "csrf_token": csrf_of(html), "username": "carol", "roles": ["trader", "bogus"], "kyc_tier": "1",
        "code": people["admin"].totp.at(clock() // 1000 + 30)})
    shown = _page(client, response.headers["Location"])
    assert "user carol created" in shown and "srs_" in " ".join(notices(shown))
    user = console_app.extensions["strongroom.access"].users.get_user("carol")
    assert sorted(user.roles) == ["trader"] and user.kyc_tier == 1
    assert "srs_" not in _page(client, "/console/admin")  # the secret is never shown again


def test_trader_creates_and_revokes_own_api_key_with_totp(console_app, people, clock):
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/keys")
    html = _post(client, "/console/keys", html, scopes="read", label="bot",
                 code=people["alice"].totp.at(clock() // 1000 + 30))
    assert "secret (shown once" in html, notices(html)
    key_id = re.search(r'data-key="([^"]+)"', html).group(1)
    clock.advance(30_000)
    html = _post(client, f"/console/keys/{key_id}/revoke", html,
                 code=people["alice"].totp.at(clock() // 1000 + 30))
    assert f"key {key_id} revoked" in html
    assert re.search(rf'data-key="{key_id}">.*?class="state">revoked<', html, re.S)


def test_form_with_bad_input_shows_the_reason_and_calls_nothing(console_app, people, clock):
    _fund(console_app, "alice")
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/trade?symbol=BTC-PERP")
    html = _post(client, "/console/trade/orders", html, symbol="BTC-PERP", id="q1", side="buy", type="limit",
                 qty="1.5", price="58000", tif="GTC", margin_mode="cross")
    assert "quantity was &#39;1.5&#39;, must be a whole number of lots" in html, notices(html)
    html = _post(client, "/console/trade/collateral", html, direction="deposit", amount="-5",
                 symbol="BTC-PERP")
    assert "amount was &#39;-5&#39;, must be positive" in html, notices(html)
    html = _post(client, "/console/trade/positions/BTC-PERP/leverage", html, leverage="1e3")
    assert "leverage must be a whole number" in html, notices(html)
    html = _post(client, "/console/wallet/withdrawals", _page(client, "/console/wallet"), asset="NOPE",
                 amount="1", destination="x", code="", idempotency_key="k1")
    assert "choose an asset" in html, notices(html)
    # Nothing reached the exchange or the withdrawals service.
    assert _page(client, "/console/trade?symbol=BTC-PERP").count("data-order-id=") == 0
    assert "data-state=" not in _page(client, "/console/wallet")


def test_trader_amends_resting_order_price_and_quantity(console_app, people, clock):
    _fund(console_app, "alice")
    client = logged_in(console_app, people["alice"], clock)
    html = _page(client, "/console/trade?symbol=BTC-PERP")
    html = _post(client, "/console/trade/collateral", html, direction="deposit", amount="10000",
                 symbol="BTC-PERP")
    html = _post(client, "/console/trade/orders", html, symbol="BTC-PERP", id="a1", side="buy", type="limit",
                 qty="2", price="58000", tif="GTC", margin_mode="cross")
    assert "order a1 placed" in html, notices(html)
    assert 'action="/console/trade/orders/BTC-PERP/a1/amend"' in html  # the row's amend form
    html = _post(client, "/console/trade/orders/BTC-PERP/a1/amend", html, price="57900.5", qty="1")
    assert "order a1 amended" in html, notices(html)
    book = console_app.test_client().get("/api/v1/market/depth", base_url=LOCAL,
                                         query_string={"symbol": "BTC-PERP"}).get_json()
    assert ["57900.5", "0.001", "1"] in book["bids"] and not any(b[0] == "58000.0" for b in book["bids"])
    html = _post(client, "/console/trade/orders/BTC-PERP/a1/amend", html, price="", qty="")
    assert "give a new price or quantity" in html, notices(html)
    html = _post(client, "/console/trade/orders/BTC-PERP/a1/amend", html, price="abc", qty="")
    assert "price was &#39;abc&#39;" in html, notices(html)
    html = _post(client, "/console/trade/orders/BTC-PERP/nope/amend", html, price="57000", qty="")
    assert re.search(r"\b3\d{3} \w+:", " ".join(notices(html))), notices(html)  # the book's own refusal
