"""The Ethereum side of the devnet: an anvil node whose state lives in the data dir.

anvil runs with ``--state <data dir>/devnet/anvil-state.json`` (loaded on
start, dumped every second and on exit, blocks included) on 127.0.0.1, chain
id 31337, with its standard pre-funded, unlocked dev accounts; the first one
is the faucet. The dev token (USDC, ``contracts/StrongroomUSD.sol``) is
deployed on first start and its address kept in ``devnet.json``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from web3 import Web3

from custody.chains.ethereum.devchain import AnvilChain

STATE_NAME = "anvil-state.json"
STATE_INTERVAL_S = 1
READY_TIMEOUT_S = 30.0
REPO_ANVIL = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "anvil"


def anvil_binary() -> str | None:
    """Return the anvil executable (./node_modules/.bin first, then PATH), or None."""
    if REPO_ANVIL.exists():
        return str(REPO_ANVIL)
    return shutil.which("anvil")


class AnvilNode:
    """A child anvil process with persistent state."""

    def __init__(self, binary: str, directory: Path, host: str, port: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.url = f"http://{host}:{port}"
        self.log_path = directory / "anvil.log"
        command = [binary, "--host", host, "--port", str(port), "--state", str(directory / STATE_NAME),
                   "--state-interval", str(STATE_INTERVAL_S)]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)  # noqa: S603
        self._wait_ready()

    def _wait_ready(self) -> None:
        web3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 2}))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode}; see {self.log_path}")
            try:
                web3.eth.block_number  # noqa: B018 (a readiness probe)
                return
            except Exception:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"anvil did not answer on {self.url} within {READY_TIMEOUT_S:.0f} s")

    def control(self) -> AnvilChain:
        return AnvilChain(self.url)

    def close(self) -> None:
        """Stop anvil; it dumps its state on SIGTERM."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ensure_token(chain: AnvilChain, known: str | None) -> str:
    """Return the dev token's address: ``known`` if its code is on chain, else deploy it."""
    if known and chain.web3.eth.get_code(Web3.to_checksum_address(known)):
        chain.token_address = Web3.to_checksum_address(known)
        return chain.token_address
    return chain.ensure_token()
