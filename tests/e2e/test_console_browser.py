"""The web console in a real browser (Debian's chromium, headless) against a real ``strongroom serve``.

One server on SQLite with the demo market maker is started for the module (per xdist worker: every
journey stands on its own, from the seeded data); each role gets its own
browser profile (a new empty user-data-dir). Journeys: the trader moves collateral, places an order
and sees it on the live book, cancels it and sees it leave, and withdraws with a TOTP code; treasury
registers the browser as an approval device and approves a withdrawal (signed in the page,
step-up TOTP); the auditor reads checkpoints and reserves; the admin disables a user. Refusals: a role
cannot open another's pages (403), an inline script is blocked by the CSP, a POST without the CSRF
token is refused. Screenshots at 1280 and 390 px wide go to ``STRONGROOM_TEST_ARTIFACTS``
(default ``var/test-artifacts/console``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (scripts/install-system-deps.sh)",
                allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TWO_DAYS_MS = 2 * 86_400_000
WITHDRAW_TO = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
START_TIMEOUT_S = 90
UI_TIMEOUT_MS = 15_000


@dataclass
class Login:
    password: str
    totp: pyotp.TOTP


@dataclass
class Server:
    url: str
    logins: dict[str, Login]
    artifacts: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(env: dict[str, str]) -> dict[str, Login]:
    """Demo data, logins and a whitelisted address, as if set up two days ago (the timelock passed)."""
    script = r"""
import json, os, time
from strongroom.wiring import build_access_services
from custody.audit.service import AuditService
from custody.audit.reserves import ReservesService
from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger
from strongroom import migrate
from strongroom.demo import seed_demo, seed_demo_access, seed_demo_console
from strongroom.keystores import ensure_demo_passphrase_file, open_keystore
from strongroom.settings import Settings

settings = Settings.from_env()
settings.ensure_data_dir()
ensure_demo_passphrase_file(settings.keystore_passphrase_file)
migrate.upgrade(settings.database_url)
sessions = make_session_factory(make_engine(settings.database_url))
ledger = Ledger(sessions)
keystore = open_keystore(settings)
seed_demo(ledger)
past = lambda: int(time.time() * 1000) - int(os.environ["CONSOLE_E2E_PAST_MS"])
services = build_access_services(sessions, keystore, ledger, past)
seed_demo_access(services)
lines = seed_demo_console(services)
services.withdrawals.add_whitelist("alice", "BTC", os.environ["CONSOLE_E2E_WHITELIST"], "my cold wallet")
# A withdrawal waiting for treasury now, so the treasury journey does not depend on the trader's.
from custody.withdrawals.service import WithdrawalInput
today = build_access_services(sessions, keystore, ledger, lambda: int(time.time() * 1000))
today.withdrawals.create(today.users.get_user("alice"), WithdrawalInput(
    asset="BTC", amount_minor=25_000_000, destination=os.environ["CONSOLE_E2E_WHITELIST"],
    source_wallet="hot"), "wd_" + "e2e0" * 8)
audit = AuditService(sessions, ledger, keystore)
audit.create_checkpoint()
ReservesService(sessions, audit).create_snapshot()
rows = [line.split() for line in lines[2:-1]]
# A second admin for the markets journey: TOTP steps are per person, each good once and in order.
import pyotp
from custody.access.users import parse_roles
from strongroom.console.accounts import ConsoleAccounts
services.users.create_user("ops", parse_roles(["admin"]), kyc_tier=0, actor="e2e")
ConsoleAccounts(sessions, services.mfa, services.clock).set_password("ops", "ops-e2e-password", actor="e2e")
enrolment = services.mfa.enrol("ops")
assert services.mfa.confirm("ops", pyotp.TOTP(enrolment.secret_base32).at(past() // 1000)) is None
rows.append(["ops", "admin", "ops-e2e-password", enrolment.secret_base32])
print(json.dumps(rows))
"""
    env = dict(env, CONSOLE_E2E_PAST_MS=str(TWO_DAYS_MS), CONSOLE_E2E_WHITELIST=WITHDRAW_TO)
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True,
                         timeout=120)
    import json

    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return {user: Login(password, pyotp.TOTP(secret)) for user, _role, password, secret in rows}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console-e2e")
    port, stream_port = _free_port(), _free_port()
    env = dict(os.environ, STRONGROOM_DATA_DIR=str(data), PYTHONPATH=str(ROOT),
               STRONGROOM_STREAM_PORT=str(stream_port),
               STRONGROOM_KEYSTORE_PASSPHRASE_FILE=str(data / "passphrase"), STRONGROOM_PORT=str(port),
               STRONGROOM_EXCHANGE_DEMO_MAKER="1", STRONGROOM_LOG_LEVEL="WARNING")
    logins = _seed(env)
    log = (data / "serve.log").open("w")
    serve = [sys.executable, "-c", "from strongroom.cli import main; main()", "serve"]
    process = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url + "/console/login", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("strongroom serve did not start:\n" + (data / "serve.log").read_text()[-3000:])
        time.sleep(0.3)
    default_artifacts = ROOT / "var" / "test-artifacts" / "console"
    artifacts = Path(os.environ.get("STRONGROOM_TEST_ARTIFACTS") or default_artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        yield Server(url, logins, artifacts)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    with playwright_sync.sync_playwright() as p:
        yield p


def _wait_until(page, predicate: str, arg: object = None, timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` (a JS function) from Python until it is truthy.

    ``page.wait_for_function`` polls inside the page by compiling the predicate with
    ``new Function``, which the console's CSP (no 'unsafe-eval') refuses whenever the
    first check is false; ``page.evaluate`` runs through the DevTools protocol instead.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate, arg):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {predicate}"
        time.sleep(0.1)


def _browser(playwright, tmp_path: Path, name: str):
    profile = tmp_path / f"profile-{name}"
    shutil.rmtree(profile, ignore_errors=True)
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=DESKTOP)
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context


def _code(login: Login, offset_s: int = 0) -> str:
    """Return the code of the step ``offset_s`` away, never within 5 s of a step change.

    The server accepts the previous, current and next step, each once and in increasing order;
    a code for the previous step computed just before a step change would arrive as stale.
    """
    into_step = time.time() % 30
    if into_step > 25:
        time.sleep(30.5 - into_step)
    return login.totp.at(int(time.time()) + offset_s)


def _log_in(page, server: Server, user: str, offset_s: int = 0) -> None:
    login = server.logins[user]
    page.goto(server.url + "/console/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", login.password)
    page.fill("input[name=code]", _code(login, offset_s))
    page.click("button[type=submit]")
    try:
        page.wait_for_url(re.compile(r".*/console/(trade|treasury|audit|admin|markets).*"))
    except playwright_sync.TimeoutError:
        pytest.fail(f"{user} could not log in: {page.url}\n{page.content()[:3000]}")


def _notice(page) -> str:
    return page.locator(".notice").first.inner_text()


def _shot(page, server: Server, name: str) -> None:
    page.screenshot(path=str(server.artifacts / f"{name}.png"), full_page=False)


def test_trader_orders_move_the_live_book_and_withdrawal_needs_totp(server: Server, playwright, tmp_path):
    context = _browser(playwright, tmp_path, "alice")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "alice", offset_s=-30)
    page.goto(server.url + "/console/trade?symbol=BTC-PERP")
    page.wait_for_selector("#bids tr", timeout=30_000)  # the demo maker's quotes, live
    _wait_until(page, "() => document.getElementById('book-seq').textContent.startsWith('live')")
    page.fill("form.collateral input[name=amount]", "20000")
    page.click("form.collateral button[value=deposit]")
    assert "collateral deposit" in _notice(page)

    mark = page.request.get(server.url + "/api/v1/market/mark?symbol=BTC-PERP").json()
    mark_price = mark["marks"][0]["mark"] if "marks" in mark else mark["mark"]
    price = (int(float(mark_price) * 0.95) // 10) * 10
    page.check("label.buy input")
    page.select_option("#order-type", "limit")
    page.fill("input[name=qty]", "7")
    page.fill("input[name=price]", str(price))
    page.click("#place-order")
    assert "placed" in _notice(page)
    level = page.locator("#bids tr", has_text=f"{price}.0")
    level.first.wait_for()  # our order on the book, seen through the polled depth
    _shot(page, server, "trader-desktop")
    order_id = page.locator("#open-orders tbody tr[data-order-id]").first.get_attribute("data-order-id")
    row = page.locator(f"#open-orders tr[data-order-id='{order_id}']")
    row.locator(".amend-order input[name=price]").fill(str(price - 10))
    row.locator(".amend-order button").click()
    assert "amended" in _notice(page), _notice(page)
    page.locator("#bids tr", has_text=f"{price - 10}.0").first.wait_for()  # the book moved with it
    page.locator(f"#open-orders tr[data-order-id='{order_id}'] .cancel-order button").click()
    assert "cancelled" in _notice(page)
    _wait_until(
        page,
        "price => ![...document.querySelectorAll('#bids tr td:first-child')]"
        ".some(td => td.textContent === price)",
        f"{price - 10}.0")

    # A market buy from a second tab: this tab, not reloaded, sees the trade arrive on the stream.
    other = context.new_page()
    other.goto(server.url + "/console/trade?symbol=BTC-PERP")
    other.select_option("#order-type", "market")
    other.fill("input[name=qty]", "1")
    other.click("#place-order")
    assert "trade" in _notice(other), _notice(other)
    _wait_until(page, "() => [...document.querySelectorAll('#trades tbody tr td:nth-child(2)')]"
                      ".some(td => td.textContent === '0.001')")
    other.close()
    # Charts drawn in the page (canvas, no library): the trade makes a candle, the book a depth curve.
    _wait_until(page, "() => Number(document.getElementById('candle-chart').dataset.candles) >= 1")
    _wait_until(page, "() => Number(document.getElementById('depth-chart').dataset.levels) >= 2")
    # The position it opened reaches this page over the private stream (listen token), no reload:
    # size, entry, mark, uPnL, liquidation price, leverage.
    position = page.locator("#positions tbody tr", has_text="BTC-PERP").first
    position.wait_for()
    assert re.search(r"\d+\.\dx", position.inner_text()), position.inner_text()

    page.goto(server.url + "/console/options")  # the options chain: calls and puts by strike
    assert page.locator(".option-chain tr[data-strike] td.mark a").count() >= 2
    _shot(page, server, "trader-options")

    page.set_viewport_size(PHONE)
    page.goto(server.url + "/console/trade?symbol=BTC-PERP")
    page.wait_for_selector("#bids tr")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
    _shot(page, server, "trader-mobile")
    page.set_viewport_size(DESKTOP)

    page.goto(server.url + "/console/wallet")
    page.select_option("#withdraw-form select[name=asset]", "BTC")
    page.fill("#withdraw-form input[name=amount]", "0.2")
    page.fill("#withdraw-form input[name=code]", "000000")
    page.click("#withdraw-form button")
    assert "mfa" in _notice(page).lower()
    page.select_option("#withdraw-form select[name=asset]", "BTC")
    page.fill("#withdraw-form input[name=amount]", "0.2")
    page.fill("#withdraw-form input[name=code]", _code(server.logins["alice"], 0))
    page.click("#withdraw-form button")
    assert "pending_approval" in _notice(page)
    assert page.locator("#withdrawals tr[data-state=pending_approval]").count() >= 1
    _shot(page, server, "trader-wallet")

    # Another role's page, and forged requests, are refused.
    assert page.goto(server.url + "/console/treasury").status == 403
    blocked = page.request.post(server.url + "/console/trade/orders",
                                form={"symbol": "BTC-PERP", "id": "forged", "side": "buy", "qty": "1"})
    assert blocked.status == 403
    page.goto(server.url + "/console/trade")
    injected = page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__injected = 1'; document.body.appendChild(s);
        return window.__injected === undefined; }""")
    assert injected, "an inline script ran: the CSP did not block it"
    context.close()


def test_treasury_approves_with_device_key_and_totp(server: Server, playwright, tmp_path):
    context = _browser(playwright, tmp_path, "treasury1")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "treasury1", offset_s=-30)
    page.goto(server.url + "/console/treasury")
    intent = page.locator("article.intent").first
    intent.wait_for()
    assert "BTC" in intent.inner_text() and WITHDRAW_TO in intent.inner_text()
    assert "large-hot-approvals" in intent.inner_text()
    page.fill("#device-form input[name=code]", _code(server.logins["treasury1"], 0))
    with page.expect_navigation():  # the page makes the key, then submits the form itself
        page.click("#device-form button")
    assert "approval devices" in _notice(page)
    page.locator("article.intent .approve-form input[name=code]").first.fill(
        _code(server.logins["treasury1"], 30))
    with page.expect_navigation():  # the page signs, then submits the form itself
        page.locator("article.intent .approve-form button").first.click()
    assert "approved: withdrawal is now" in _notice(page), _notice(page)
    _shot(page, server, "treasury-desktop")
    assert page.goto(server.url + "/console/admin").status == 403
    context.close()


def test_auditor_sees_checkpoints_reserves_and_verify_line(server: Server, playwright, tmp_path):
    context = _browser(playwright, tmp_path, "auditor")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "auditor")
    page.goto(server.url + "/console/audit")
    pinned = page.locator("#checkpoints code.hash").first.inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", pinned)
    assert f"--trusted-checkpoint {pinned}" in page.locator("#verify-line").inner_text()
    assert page.locator("#reserves tbody tr").count() >= 3
    assert page.locator("#security-log tbody tr").count() > 0
    _shot(page, server, "auditor-desktop")
    _verify_proofs_in_the_page(page, server)
    assert page.goto(server.url + "/console/trade").status == 403
    assert page.goto(server.url + "/console/admin").status == 403
    context.close()


def _verdict(page, proof: object, snapshot_hash: str = "", *, raw: str | None = None) -> tuple[str, str]:
    """Verify ``proof`` (or ``raw`` text) in the page with the form's keys and pins; return the verdict."""
    import json

    page.evaluate("() => { document.getElementById('proof-verdict').dataset.verdict = ''; }")
    page.fill("#proof-verifier textarea[name=proof]", json.dumps(proof) if raw is None else raw)
    page.fill("#proof-verifier input[name=snapshot_hash]", snapshot_hash)
    page.click("#proof-verifier button")
    _wait_until(page, "() => document.getElementById('proof-verdict').dataset.verdict !== ''")
    verdict = page.locator("#proof-verdict")
    return str(verdict.get_attribute("data-verdict")), verdict.inner_text()


def _verify_proofs_in_the_page(page, server: Server) -> None:
    """The in-page verifier agrees with ``verify_liability_proof`` and refuses tampered proofs."""
    import copy
    import json

    from custody.audit.liability_proof import verify_liability_proof
    from tests.custody.audit.test_docs import examples as docs_examples

    page.goto(server.url + "/console/audit?owner=alice&asset=BTC")
    proof = json.loads(page.input_value("#proof-verifier textarea[name=proof]"))
    keys = json.loads(page.input_value("#proof-verifier textarea[name=keys]"))
    key = next(k for k in keys["keys"] if (k["name"], k["version"]) == (
        proof["snapshot"]["key_name"], proof["snapshot"]["key_version"]))
    offline = verify_liability_proof(proof, bytes.fromhex(key["public_key"]))
    assert offline.ok, offline.problems
    verdict, text = _verdict(page, proof)
    assert verdict == "verified" and f"snapshot hash {offline.snapshot_hash}" in text, text
    assert _verdict(page, proof, offline.snapshot_hash)[0] == "verified"
    assert _verdict(page, proof, "0" * 64)[0] == "refused"  # a different snapshot than the pinned one

    richer = dict(proof, balance=str(int(proof["balance"]) + 1))
    verdict, text = _verdict(page, richer)
    assert verdict == "refused" and "does not lead to the proof's root" in text, text
    resigned = copy.deepcopy(proof)
    resigned["snapshot"]["liabilities"]["BTC"]["total"] = "1"
    verdict, text = _verdict(page, resigned)
    assert verdict == "refused" and "signature does not verify" in text, text
    assert _verdict(page, {"format": "strongroom.liability-proof"})[0] == "unusable"

    # The worked example of docs/proof-of-reserves.md, with the key it embeds (no keys.json pinned).
    page.fill("#proof-verifier textarea[name=keys]", "")
    documented = json.loads(docs_examples("proof-of-reserves.md")["liability-proof"])
    offline = verify_liability_proof(documented)
    verdict, text = _verdict(page, documented, offline.snapshot_hash)
    assert offline.ok and verdict == "verified" and "key embedded in the proof" in text, text
    _duplicate_keys_refused_like_the_cli(page, documented, offline.snapshot_hash)


def _duplicate_keys_refused_like_the_cli(page, documented: dict, snapshot_hash: str) -> None:
    """A duplicated key (JSON.parse would keep the last, genuine one) is refused, as the CLI does."""
    import json

    from custody.audit.untrusted import FormatError, loads

    text = json.dumps(documented)
    duplicated = '{"balance": "1", ' + text[1:]  # the real balance comes last and would win
    spelled = '{"\\u0062alance": "1", ' + text[1:]  # the same key, escaped
    nested = text.replace('"snapshot": {', '"snapshot": {"v": 99, ', 1)
    for raw in (duplicated, spelled, nested):
        with pytest.raises(FormatError, match="duplicate key"):
            loads(raw.encode(), "proof")
        verdict, shown = _verdict(page, {}, snapshot_hash, raw=raw)
        assert verdict == "unusable" and "duplicate key" in shown, (raw[:80], shown)
    assert _verdict(page, {}, snapshot_hash, raw=text)[0] == "verified"  # the same text without it


def test_trader_settings_apply_to_pages_and_alerts_are_listed(server: Server, playwright, tmp_path):
    """Bob's theme, order defaults and panels apply on his pages; his alert rules are his alone."""
    context = _browser(playwright, tmp_path, "bob")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "bob", offset_s=-30)
    page.goto(server.url + "/console/settings")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.select_option("#setting-theme", "light")
    page.select_option("#setting-order-type", "market")
    page.select_option("#setting-margin-mode", "isolated")
    page.fill("#setting-leverage", "7")
    page.uncheck("#setting-panels input[value=fills]")
    page.click("#save-settings")
    assert "settings saved" in _notice(page), _notice(page)
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert light == "rgb(245, 247, 250)" and light != dark
    page.goto(server.url + "/console/trade?symbol=BTC-PERP")
    page.wait_for_selector("#bids tr", timeout=30_000)  # the live book still works with the layout
    assert page.input_value("#order-type") == "market"
    assert page.input_value("#order-margin-mode") == "isolated"
    assert page.locator("#fills").count() == 0 and page.locator("#positions").count() == 1
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == light
    _shot(page, server, "trader-settings-light")

    page.goto(server.url + "/console/alerts")
    page.select_option("#alert-kind", "price_cross")
    page.select_option("#alert-form select[name=symbol]", "BTC-PERP")
    page.fill("#alert-form input[name=price]", "123456")
    page.click("#create-alert")
    assert "created" in _notice(page), _notice(page)
    assert "BTC-PERP mark above 123456.000000" in page.locator("#alert-rules").inner_text()
    page.fill("#alert-form input[name=price]", "-5")
    page.click("#create-alert")
    assert "6101" in _notice(page)
    page.fill("#webhook-form input[name=url]", "https://169.254.169.254/latest")
    page.fill("#webhook-form input[name=code]", _code(server.logins["bob"], 0))
    page.click("#webhook-form button")
    assert "6202 webhook_destination_refused" in _notice(page), _notice(page)
    _shot(page, server, "trader-alerts")
    context.close()


def test_admin_disables_a_user(server: Server, playwright, tmp_path):
    context = _browser(playwright, tmp_path, "admin")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "admin", offset_s=-30)
    page.goto(server.url + "/console/admin")
    row = page.locator("#users tr[data-user=bob]")
    row.locator("input[name=code]").fill(_code(server.logins["admin"], 0))
    row.locator("button").click()
    assert "bob disabled" in _notice(page)
    assert page.locator("#users tr[data-user=bob] .state").inner_text() == "disabled"
    _shot(page, server, "admin-desktop")
    page.set_viewport_size(PHONE)
    _shot(page, server, "admin-mobile")
    assert page.goto(server.url + "/console/wallet").status == 403

    # Installable and offline: the manifest, and the service worker's shell when the network is gone.
    manifest = page.request.get(server.url + "/console/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert manifest.json()["start_url"] == "/console/"
    page.goto(server.url + "/console/admin")
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    context.set_offline(True)
    page.goto(server.url + "/console/admin")
    assert "You are offline" in page.content()
    context.set_offline(False)
    context.close()


def test_admin_halts_and_reopens_a_market(server: Server, playwright, tmp_path):
    context = _browser(playwright, tmp_path, "ops")
    page = context.pages[0] if context.pages else context.new_page()
    _log_in(page, server, "ops", offset_s=-30)
    page.goto(server.url + "/console/markets")
    row = page.locator("#markets tr[data-symbol='ETH-PERP']")
    assert row.get_attribute("data-mode") == "open"
    row.locator("select[name=mode]").select_option("halted")
    row.locator("input[name=reason]").fill("e2e incident")
    row.locator("input[name=code]").fill(_code(server.logins["ops"], 0))
    row.locator("button").click()
    assert "ETH-PERP is now halted" in _notice(page), _notice(page)
    row = page.locator("#markets tr[data-symbol='ETH-PERP']")
    assert row.get_attribute("data-mode") == "halted" and "e2e incident" in row.inner_text()
    public = page.request.get(server.url + "/api/v1/market/instruments").json()["instruments"]
    assert next(i["status"] for i in public if i["symbol"] == "ETH-PERP") == "halted"
    _shot(page, server, "admin-markets")

    row.locator("select[name=mode]").select_option("open")
    row.locator("input[name=code]").fill(_code(server.logins["ops"], 30))
    row.locator("button").click()
    assert "ETH-PERP is now open" in _notice(page), _notice(page)
    assert page.locator("#markets tr[data-symbol='ETH-PERP']").get_attribute("data-mode") == "open"
    public = page.request.get(server.url + "/api/v1/market/instruments").json()["instruments"]
    assert next(i["status"] for i in public if i["symbol"] == "ETH-PERP") == "open"
    assert page.goto(server.url + "/console/trade").status == 403  # an admin does not trade
    context.close()
