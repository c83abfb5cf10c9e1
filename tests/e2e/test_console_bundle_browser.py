"""Treasury's cold bundle round trip in a real browser (Debian's chromium, headless).

The console app runs in this process (a threaded werkzeug server on port 0) over the
embedded Ethereum chain with the real cold-transfer service: the treasurer exports an
approved cold withdrawal, the page plays its QR frames one after another (the frames
read off the page reassemble into exactly the bundle file), the signer signs that file,
and the treasurer uploads the signed answer, which is checked and broadcast.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from signer import qr
from tests.e2e.test_console_browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, UI_TIMEOUT_MS, _wait_until
from tests.strongroom.console.conftest import console_app  # noqa: F401 (fixture)
from tests.strongroom.console.test_console_bundles import (  # noqa: F401 (fixtures)
    _code,
    _person,
    app,
    database_url,
    world,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "console"


@pytest.fixture
def served(app: Flask) -> Iterator[str]:  # noqa: F811
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=30)


def test_treasurer_exports_bundle_as_animated_qr_and_uploads_signed_answer(
        app: Flask, world: Any, clock: Any, served: str, tmp_path: Path) -> None:  # noqa: F811
    from tests.strongroom.console.test_console_bundles import ETH

    withdrawal_id = world.cold_withdrawal(ETH)
    treasurer = _person(app, world, world.treasury[0])
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(served + "/console/login")
        page.fill("input[name=username]", treasurer.username)
        page.fill("input[name=password]", treasurer.password)
        page.fill("input[name=code]", _code(treasurer, clock))
        page.click("button[type=submit]")
        page.wait_for_url("**/console/treasury")

        page.fill("#export-bundle input[name=request_id]", withdrawal_id)
        page.fill("#export-bundle input[name=code]", _code(treasurer, clock))
        page.click("#export-bundle button")
        page.wait_for_selector("#qr-player.playing")
        total = int(page.locator(".qr-frame").first.get_attribute("data-total"))
        bundle_id = page.locator("#bundle").get_attribute("data-bundle")
        exported = world.transfers.bundle_bytes(bundle_id)
        assert total == len(qr.split(exported))
        # One frame on screen at a time, the next after a moment (a single frame stays put).
        assert page.locator(".qr-frame:visible").count() == 1
        if total > 1:
            _wait_until(page, "() => document.getElementById('qr-player').dataset.current === '2'")
        texts = page.eval_on_selector_all(".frame-text", "nodes => nodes.map(n => n.textContent)")
        assert qr.join(texts) == exported
        artifacts = Path(os.environ.get("STRONGROOM_TEST_ARTIFACTS") or ARTIFACTS)
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "treasury-bundle-qr.png"))

        signed = world.sign(exported)
        (tmp_path / "signed.json").write_bytes(signed)
        page.goto(served + "/console/treasury")
        page.set_input_files("#import-bundle input[name=files]", str(tmp_path / "signed.json"))
        page.fill("#import-bundle input[name=code]", _code(treasurer, clock))
        page.click("#import-bundle button")
        notice = page.locator(".notice").first.inner_text()
        assert f"bundle {bundle_id} accepted: broadcast" in notice, notice
        browser.close()
    deadline = time.monotonic() + 30
    while world.withdrawal_state(withdrawal_id) != "broadcasting":
        assert time.monotonic() < deadline
        time.sleep(0.2)
