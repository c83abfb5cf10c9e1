"""Dev-chain fixtures: a fresh embedded chain per test, and one anvil node per session.

The anvil binary comes from the npm package ``@foundry-rs/anvil``
(``scripts/install-node-deps.sh``). Without it anvil tests are skipped, unless
``STRONGROOM_REQUIRE_ANVIL=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from custody.chains.ethereum.devchain import AnvilChain

REPO = Path(__file__).resolve().parents[3]
ANVIL_START_TIMEOUT_S = 20


def anvil_binary() -> str | None:
    local = REPO / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    return shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """Start anvil on a free localhost port for the session; yield its URL."""
    binary = anvil_binary()
    if binary is None:
        if os.environ.get("STRONGROOM_REQUIRE_ANVIL") == "1":
            pytest.fail("anvil not found but STRONGROOM_REQUIRE_ANVIL=1: run scripts/install-node-deps.sh")
        pytest.skip("anvil not installed: run scripts/install-node-deps.sh")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", "31337"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ANVIL_START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"anvil did not start on port {port}")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def anvil(anvil_url: str) -> Iterator[AnvilChain]:
    """The session's anvil node, reverted to its starting state after the test."""
    chain = AnvilChain(anvil_url)
    chain.set_automine(True)
    snapshot = chain.snapshot()
    yield chain
    chain.set_automine(True)
    chain.revert(snapshot)
