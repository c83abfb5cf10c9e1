"""A real platform for kill -9 tests: a devnet, a database prepared in it, and `strongroom serve`
processes that can be killed at a named step (kill9_serve_worker.py) and started again.

The test process owns what survives a killed server: the devnet (anvil, or the in-process chain
behind its JSON-RPC facade), the SQLite file, the keystore and the exchange journal directory.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask

from custody.audit.export import PublicKey
from custody.audit.service import AuditService
from custody.ledger.service import Ledger, wall_clock_ms
from policies.api_key import Scope
from policies.approval import sign_approval
from policies.mfa import TOTP_STEP_S, TOTP_WINDOW_STEPS, totp_code
from policies.request_signing import sign_request
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes
from strongroom import migrate
from strongroom.app import create_app
from strongroom.devnet.control import EthereumControl
from strongroom.devnet.ethereum import anvil_binary
from strongroom.devnet.runner import Devnet, start
from strongroom.runtimes.ethereum import WalletRuntime
from strongroom.runtimes.from_env import runtime_from_env
from strongroom.settings import Settings
from strongroom.simulation.client import withdrawal_subject

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "kill9_serve_worker.py"
START_TIMEOUT_S = 180.0  # bounds a hang only: a start takes a few seconds
STOP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
CONFIRMATIONS = 3
DAY_MS = 86_400_000
TOTP_STEP_MS = TOTP_STEP_S * 1000
COLD_ADDRESS = "0x000000000000000000000000000000000000C01D"
APPROVAL_TTL_MS = 3_600_000
CLAIM_STALE_MS = 3_000  # the server's idempotency claim takeover, shortened from 60 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_devnet(data_dir: Path) -> Devnet:
    """Start the devnet on free ports: anvil when installed, else the in-process chain's facade."""
    for attempt in range(3):  # a free port can be taken between the probe and the bind
        try:
            return start(data_dir, eth_port=free_port(), btc_port=free_port(),
                         use_anvil=anvil_binary() is not None)
        except OSError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@dataclass
class Person:
    """A user at the HTTP API: API key, TOTP secret (each step used once) and an approval key."""

    username: str
    key_id: str
    secret: str
    totp_secret: str
    last_step: int
    approver_key: Ed25519PrivateKey | None = None
    approver_key_id: str = ""

    def mfa_code(self) -> str:
        """Return a code for the oldest TOTP step the server still accepts and this user has not
        used (a step is single-use), waiting for the next step when all are spent."""
        deadline = time.monotonic() + 3 * TOTP_STEP_S
        while True:
            now_step = wall_clock_ms() // TOTP_STEP_MS
            step = max(self.last_step + 1, now_step - TOTP_WINDOW_STEPS + 1)  # +1: not the edge one
            if step <= now_step + TOTP_WINDOW_STEPS:
                self.last_step = step
                return totp_code(self.totp_secret, step * TOTP_STEP_MS)
            assert time.monotonic() < deadline, "no TOTP step became usable"
            time.sleep(0.5)

    def approval(self, withdrawal: dict[str, Any]) -> str:
        assert self.approver_key is not None
        now = wall_clock_ms()
        signed = sign_approval(self.approver_key, approver_id=self.username, key_id=self.approver_key_id,
                               subject=withdrawal_subject(withdrawal), signed_at_ms=now,
                               expires_at_ms=now + APPROVAL_TTL_MS)
        return base64.b64encode(signed.to_bytes()).decode()


@dataclass
class Server:
    """One `strongroom serve` process (through the kill9 worker) and its address."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, kill_point: str | None = None) -> None:
        env = dict(self.env)
        if kill_point:
            env["KILL9_POINT"] = kill_point
        for attempt in range(3):
            self.port = free_port()
            self.starts += 1
            with self.log.open("ab") as out:
                out.write(f"\n==== start {self.starts} kill_point={kill_point}\n".encode())
                self.proc = subprocess.Popen(
                    [sys.executable, str(WORKER), "serve", "--port", str(self.port)], env=env, cwd=ROOT,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return
            if attempt == 2:
                raise AssertionError(f"strongroom serve did not start: {self.tail()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "cannot listen" in self.tail():
                    return False  # the port was taken meanwhile: try another
                raise AssertionError(f"strongroom serve stopped at start: {self.tail()}")
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=5).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"strongroom serve did not answer /health in {START_TIMEOUT_S} s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_killed(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Wait for the process to die by its own SIGKILL (the kill point fired)."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout_s)
        assert code == -signal.SIGKILL, f"server exited {code}, not by SIGKILL: {self.tail()}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, person: Person, method: str, path: str, body: object = None, *, mfa: bool = False,
             idempotency_key: str | None = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body).encode()
        headers: dict[str, str] = {}
        if mfa:
            headers["X-Strongroom-MFA"] = person.mfa_code()
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        time.sleep(0.002)  # never two identical signatures in one millisecond
        headers.update(sign_request(key_id=person.key_id, secret=person.secret, timestamp_ms=wall_clock_ms(),
                                    method=method, path=path, body=raw))
        if body is not None:
            headers["Content-Type"] = "application/json"
        return requests.request(method, self.base + path, data=raw, headers=headers,
                                timeout=REQUEST_TIMEOUT_S)


@dataclass
class Platform:
    """The durable parts (devnet, database, keystore, data dir) and the people set up in them."""

    data_dir: Path
    devnet: Devnet
    env: dict[str, str]
    settings: Settings
    runtime: WalletRuntime
    app: Flask
    people: dict[str, Person] = field(default_factory=dict)
    pinned_keys: dict[tuple[str, int], PublicKey] = field(default_factory=dict)

    @property
    def eth(self) -> EthereumControl:
        return EthereumControl(self.devnet.info)

    @property
    def ledger(self) -> Ledger:
        found: Ledger = self.app.extensions["strongroom.ledger"]
        return found

    def server(self, name: str = "serve") -> Server:
        env = {**self.env, "KILL9_JOB_INTERVAL_S": "0.5", "KILL9_CLAIM_STALE_MS": str(CLAIM_STALE_MS)}
        return Server(env, self.data_dir / f"{name}.log")

    def close(self) -> None:
        self.app.extensions["strongroom.engine"].dispose()
        self.devnet.close()


def build_platform(tmp: Path) -> Platform:
    """Start a devnet, create and migrate the platform's database, set up the Ethereum wallets."""
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    net = start_devnet(data_dir)
    info = net.info.environment()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("STRONGROOM_", "KILL9_"))}
    env.update({key: value for key, value in info.items() if key.startswith("STRONGROOM_ETH_")})
    env.update({"STRONGROOM_DATA_DIR": str(data_dir),
                "STRONGROOM_DATABASE_URL": f"sqlite:///{data_dir / 'sr.db'}",
                "STRONGROOM_KEYSTORE_PASSPHRASE": "kill9 test passphrase, not a secret",
                "STRONGROOM_ETH_COLD_ADDRESS": COLD_ADDRESS,
                "STRONGROOM_ETH_CONFIRMATIONS": str(CONFIRMATIONS),
                "STRONGROOM_EXCHANGE_FEED": "none", "STRONGROOM_STREAM_PORT": "0",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        settings = Settings.from_env(dict(os.environ))
        migrate.upgrade(settings.database_url)
        runtime = runtime_from_env(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert runtime is not None
    # The test process's own view of the platform (no exchange: the server owns its journal).
    app = create_app({"TESTING": True, "EXCHANGE_ENABLED": False, "WALLETS": runtime}, settings=settings)
    platform = Platform(data_dir, net, env, settings, runtime, app)
    runtime.tick()  # a fresh watcher starts at the tip
    return platform


def add_person(platform: Platform, username: str, roles: set[Role], *, approver: bool = False,
               seed: int = 0) -> Person:
    """Create a user with an API key, confirmed MFA and (for approvers) a registered approval key."""
    access = platform.app.extensions["strongroom.access"]
    _, key = access.users.create_user(username, frozenset(roles), kyc_tier=2, key_scopes=frozenset(Scope),
                                      actor="kill9-setup")
    assert key is not None
    enrolment = access.mfa.enrol(username)
    step = wall_clock_ms() // TOTP_STEP_MS - TOTP_WINDOW_STEPS
    assert access.mfa.confirm(username, totp_code(enrolment.secret_base32, step * TOTP_STEP_MS)) is None
    person = Person(username, key.credentials.key_id, key.credentials.secret, enrolment.secret_base32, step)
    if approver:
        person.approver_key = Ed25519PrivateKey.from_private_bytes(bytes([seed + 1]) * 32)
        person.approver_key_id = f"{username}-k1"
        access.approvers.register(username, person.approver_key_id, ed25519_public_bytes(person.approver_key),
                                  actor="kill9-setup")
    platform.people[username] = person
    return person


def whitelist_past_timelock(platform: Platform, username: str, asset: str, address: str) -> None:
    """Whitelist ``address`` as it was two days ago, so the destination timelock is over."""
    from custody.withdrawals.service import Withdrawals

    access = platform.app.extensions["strongroom.access"]
    backdated = Withdrawals(platform.app.extensions["strongroom.sessions"], platform.ledger, access.policies,
                            lambda: wall_clock_ms() - 2 * DAY_MS, {"ETH": 4_000_00, "USDC": 100})
    backdated.screen = access.withdrawals.screen
    backdated.add_whitelist(username, asset, address)


def settle_chain(platform: Platform, done: Callable[[], bool], rounds: int = 30) -> None:
    """Mine and run the wallet round until ``done()`` (bounded: a hang fails, not waits)."""
    for _ in range(rounds):
        platform.runtime.tick()
        if done():
            return
        platform.eth.mine(1)
    raise AssertionError("chain did not settle")


def deposit_eth(platform: Platform, username: str, amount_wei: int) -> None:
    """Pay ``amount_wei`` to ``username``'s deposit address, credit it and consolidate it to hot."""
    runtime = platform.runtime
    address = runtime.wallets.deposit_address("ethereum-deposits", username).address
    platform.eth.fund(address, "ETH", amount_wei)
    account = runtime.wallets.user_account(username, "ETH")
    settle_chain(platform, lambda: platform.ledger.get_account(account).balance.credit_balance_posted
                 >= amount_wei)
    runtime.treasury.consolidate("ETH")
    settle_chain(platform, lambda: not [t for t in runtime.executor.recent()
                                        if t.status not in ("confirmed", "failed")])


def pin_audit_keys(platform: Platform) -> None:
    """Sign a first checkpoint (making the audit key) and pin the public keys, as at the key ceremony."""
    audit_service(platform).create_checkpoint()
    platform.pinned_keys = {(k.name, k.version): k for k in audit_service(platform).public_keys()}


def audit_service(platform: Platform) -> AuditService:
    from custody.api.audit import audit

    with platform.app.app_context():
        return audit()


def named_checks(*names: str) -> tuple[tuple[str, Any], ...]:
    """Return the simulator's checks called ``names`` (a renamed check fails here, not silently)."""
    from strongroom.simulation import invariants

    every = dict((*invariants.EVERY_STEP, *invariants.AT_AUDIT, *invariants.AT_END))
    missing = [name for name in names if name not in every]
    assert not missing, f"strongroom/simulation/invariants.py has no check {missing}"
    return tuple((name, every[name]) for name in names)


class InvariantView:
    """What strongroom/simulation/invariants.py reads of a World, over this real platform's
    database and chain (the checks used here read ``svc.app``, ``svc.ledger``, ``svc.runtime``,
    ``svc.audit()``, ``traders``, ``pinned_keys``, ``tampered``, ``btc`` and ``check_cache``)."""

    def __init__(self, platform: Platform) -> None:
        self.svc = self
        self.app = platform.app
        self.ledger = platform.ledger
        self.runtime = platform.runtime
        self.traders: list[str] = []  # their on-chain receipts are checked by the test itself
        self.pinned_keys = platform.pinned_keys
        self.tampered = False
        self.btc = None  # no Bitcoin runtime in these tests
        self.check_cache: dict[str, Any] = {}
        self._platform = platform

    def audit(self) -> AuditService:
        return audit_service(self._platform)
