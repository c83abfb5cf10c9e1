"""Cold bundles from the treasury console: export as QR frames, import the signed answer.

On the embedded Ethereum chain with the real cold-transfer service and the signer's own
signing code: the frames on the page reassemble (``signer.qr.join``) into exactly the bundle
file; the signed answer is imported from an upload or from scanned frame lines through the
CLI's reader and checks; an answer re-signed to pay an attacker is refused and nothing is
broadcast; export and import need ``wallet.manage`` and a fresh TOTP code.
"""

from __future__ import annotations

import html as html_text
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from custody.chains.ethereum.devchain import EmbeddedChain
from signer import qr
from signer.bundle import Bundle, EthereumTransaction
from tests.strongroom.console.conftest import LOCAL, PASSWORD, Person, csrf_of, login

from ...custody.bundles.helpers import ColdWorld, make_cold_harness, make_world
from ...custody.wallets.helpers import ETH
from ...signer.helpers import ETH_ATTACKER, ETH_PATH, seed


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from ...conftest import fresh_database_url

    yield from fresh_database_url(request, "sqlite", tmp_path)


@pytest.fixture
def app(console_app: Flask) -> Flask:
    return console_app


@pytest.fixture
def world(app: Flask, clock: Any, keystore: Any, database_url: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[ColdWorld]:
    monkeypatch.setenv("STRONGROOM_ETH_NETWORK", "embedded")
    harness = make_cold_harness(EmbeddedChain(), database_url, keystore, clock)
    built = make_world(app, app.test_client(), clock, keystore, harness, "embedded")
    # The server's chains, as `strongroom serve` wires them: the console's cold transfers use them.
    app.extensions["strongroom.chains"] = {"ethereum": harness.runtime}
    yield built
    app.extensions["strongroom.chains"] = {}


def _person(app: Flask, world: ColdWorld, who: Any) -> Person:
    import pyotp

    app.extensions["strongroom.console"].set_password(who.username, PASSWORD, actor="test")
    return Person(who.username, PASSWORD, pyotp.TOTP(who.totp_secret))


def _code(person: Person, clock: Any) -> str:
    """A fresh code: each TOTP step is good once and in order, so move the clock a step on."""
    clock.advance(30_000)
    return person.totp.at(clock() // 1000)


def _treasurer(app: Flask, world: ColdWorld, index: int, clock: Any) -> tuple[Person, Any]:
    """Log a treasurer in with a fresh code (their current step was spent on the approvals)."""
    person = _person(app, world, world.treasury[index])
    client = app.test_client()
    assert login(client, person, clock, code=_code(person, clock)).status_code == 303
    return person, client


def _notices(page: str) -> list[str]:
    return [html_text.unescape(n) for n in re.findall(r'class="notice[^>]*>([^<]*)', page)]


def _follow(client: Any, response: Any) -> str:
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    return str(client.get(response.headers["Location"], base_url=LOCAL).get_data(as_text=True))


def _tampered(world: ColdWorld, signed: bytes, exported: bytes) -> bytes:
    """The signed answer with its transaction re-signed by the cold key to pay the attacker."""
    from eth_account import Account

    from signer.canonical import canonical_bytes
    from signer.ethereum import ethereum_private_key
    from signer.wire import transaction_dict

    tx = Bundle.from_bytes(exported).body.transaction
    assert isinstance(tx, EthereumTransaction)
    fields = transaction_dict(tx)
    fields["to"] = ETH_ATTACKER
    raw = bytes(Account.sign_transaction(fields, ethereum_private_key(seed(0), ETH_PATH)).raw_transaction)
    document = json.loads(signed)
    document["result"]["raw_transaction"] = raw.hex()
    return canonical_bytes(document)


def test_treasury_exports_bundle_as_qr_frames_and_imports_signed_answer(app, world, clock):
    withdrawal_id = world.cold_withdrawal(ETH)
    treasurer, client = _treasurer(app, world, 0, clock)
    page = client.get("/console/treasury", base_url=LOCAL).get_data(as_text=True)
    assert 'id="export-bundle"' in page and 'id="import-bundle"' in page

    refused = _follow(client, client.post("/console/treasury/bundles/export", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "kind": "withdrawal", "request_id": withdrawal_id, "code": "000000"}))
    assert any("invalid" in n.lower() or "mfa" in n.lower() for n in _notices(refused)), _notices(refused)
    assert world.withdrawal_state(withdrawal_id) == "approved"  # nothing exported

    shown = _follow(client, client.post("/console/treasury/bundles/export", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "kind": "withdrawal", "request_id": withdrawal_id,
        "code": _code(treasurer, clock)}))
    assert any("exported" in n for n in _notices(shown)), _notices(shown)
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    bundle_id = re.search(r'id="bundle" data-bundle="([^"]+)"', shown).group(1)
    exported = world.transfers.bundle_bytes(bundle_id)
    download = client.get(f"/console/treasury/bundles/{bundle_id}/bundle.json", base_url=LOCAL)
    assert download.status_code == 200 and download.data == exported
    texts = [html_text.unescape(t) for t in re.findall(r'<pre class="frame-text">([^<]+)</pre>', shown)]
    assert len(texts) == len(qr.split(exported)) and shown.count("<svg") >= len(texts)
    assert qr.join(texts) == exported  # what the signer's `qr join` reassembles from the screen

    signed = world.sign(qr.join(texts))
    tampered = _tampered(world, signed, exported)
    page = client.get("/console/treasury", base_url=LOCAL).get_data(as_text=True)
    refused = _follow(client, client.post("/console/treasury/bundles/import", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "frames": "\n".join(qr.split(tampered, 300)),
        "code": _code(treasurer, clock)}))
    assert any("refused, nothing stored or broadcast" in n and "signed_refused" in n
               for n in _notices(refused)), _notices(refused)
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    assert world.harness.runtime.adapter.balance(ETH_ATTACKER, "ETH") == 0

    accepted = _follow(client, client.post("/console/treasury/bundles/import", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "files": (io.BytesIO(signed), "signed.json"),
        "code": _code(treasurer, clock)}, content_type="multipart/form-data"))
    assert any(f"bundle {bundle_id} accepted: broadcast" in n for n in _notices(accepted)), _notices(accepted)
    assert world.withdrawal_state(withdrawal_id) == "broadcasting"
    world.settle()
    assert world.withdrawal_state(withdrawal_id) == "completed"


def test_bundle_import_of_scanned_frames_with_one_missing_refused(app, world, clock):
    withdrawal_id = world.cold_withdrawal(ETH)
    treasurer, client = _treasurer(app, world, 1, clock)
    exported = world.transfers.export("withdrawal", withdrawal_id).data
    frames = qr.split(world.sign(exported), 200)
    assert len(frames) > 2
    page = client.get("/console/treasury", base_url=LOCAL).get_data(as_text=True)
    refused = _follow(client, client.post("/console/treasury/bundles/import", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "frames": "\n".join(frames[:1] + frames[2:]),
        "code": _code(treasurer, clock)}))
    assert any("qr_frame_missing" in n for n in _notices(refused)), _notices(refused)
    refused = _follow(client, client.post("/console/treasury/bundles/import", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "frames": "\n".join(frames), "code": ""}))
    assert any("mfa_required" in n for n in _notices(refused)), _notices(refused)
    assert world.withdrawal_state(withdrawal_id) == "awaiting_signature"
    accepted = _follow(client, client.post("/console/treasury/bundles/import", base_url=LOCAL, data={
        "csrf_token": csrf_of(page), "frames": "\n".join(reversed(frames)), "code": _code(treasurer, clock)}))
    assert any("accepted: broadcast" in n for n in _notices(accepted)), _notices(accepted)


def test_bundle_pages_refused_without_wallet_manage(app, world, clock):
    from policies.roles import Role

    from ...custody.access.helpers import make_user

    withdrawal_id = world.cold_withdrawal(ETH)
    bundle_id = world.transfers.export("withdrawal", withdrawal_id).view.bundle_id
    auditor = make_user(app, app.test_client(), clock, "auditor", {Role.AUDITOR})
    for who, home in ((world.alice, "/console/keys"), (auditor, "/console/audit")):
        person = _person(app, world, who)
        client = app.test_client()
        assert login(client, person, clock, code=_code(person, clock)).status_code == 303
        html = client.get(home, base_url=LOCAL).get_data(as_text=True)
        assert 'id="export-bundle"' not in html
        assert client.get(f"/console/treasury/bundles/{bundle_id}", base_url=LOCAL).status_code == 403
        assert client.get(f"/console/treasury/bundles/{bundle_id}/bundle.json",
                          base_url=LOCAL).status_code == 403
        for action in ("export", "import"):
            refused = client.post(f"/console/treasury/bundles/{action}", base_url=LOCAL, data={
                "csrf_token": csrf_of(html), "request_id": withdrawal_id, "code": _code(person, clock)})
            assert refused.status_code == 403
    _, client = _treasurer(app, world, 2, clock)
    assert client.get("/console/treasury/bundles/bnd-nope", base_url=LOCAL).status_code == 404
    assert client.get(f"/console/treasury/bundles/{bundle_id}", base_url=LOCAL).status_code == 200
