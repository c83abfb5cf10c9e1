"""One whole platform in one process, on a fake clock: the composition the simulation drives.

The world owns what survives a crash (the SQLite database file, the keystore
file, the exchange journal directory, the in-process Ethereum chain and the
clock) and rebuilds everything else (Flask app, ledger, wallet services,
dispatcher, exchange service) on :meth:`World.restart`, exactly as a process
restart would.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_utils.address import to_checksum_address
from flask import Flask
from flask.testing import FlaskClient

from custody.api.services import AccessServices
from custody.audit.export import PublicKey
from custody.audit.service import AuditService
from custody.bundles.service import ColdTransfers
from custody.chains.ethereum.devchain import EmbeddedChain
from custody.keystore import LocalKeystore
from custody.ledger.service import Ledger
from custody.wallets.dispatch import WithdrawalDispatcher
from exchange.feeds import ScriptedFeed
from exchange.schedule import MarketScheduler
from exchange.service import ExchangeService
from policies.api_key import Scope
from policies.mfa import totp_code
from policies.roles import Role
from policies.signature_scheme import ed25519_public_bytes
from strongroom import migrate as migrations
from strongroom.app import create_app
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime
from strongroom.settings import Settings
from strongroom.simulation.client import TOTP_STEP_MS, Person
from strongroom.simulation.clock import SimClock
from strongroom.simulation.cold import SignerMachine, anchors, cold_address, cold_transfers, signer_seed

CONFIRMATIONS = 2
ASSETS = ("ETH", "USDC")
KEYSTORE_SCRYPT_LOG2_N = 10  # cheap: the simulation's keystore protects nothing real
DAY_MS = 86_400_000
TREASURY = ("treasury1", "treasury2", "treasury3")
ADMIN = "operator"
AUDITOR = "auditor"

_template_lock = threading.Lock()
_template: Path | None = None


def migrated_sqlite(path: Path) -> str:
    """Copy a once-per-process migrated SQLite template to ``path``; return its URL."""
    global _template
    with _template_lock:
        if _template is None or not _template.exists():
            directory = Path(tempfile.mkdtemp(prefix="strongroom-sim-template-"))
            template = directory / "template.db"
            migrations.upgrade(f"sqlite:///{template}")
            _template = template
        shutil.copyfile(_template, path)
    return f"sqlite:///{path}"


def destination_of(username: str) -> str:
    """Return the outside address ``username`` withdraws to (unique per trader, holds nothing else)."""
    digest = username.encode().hex()[-38:]
    # EIP-55 checksummed: the cold path refuses any other spelling (see docs/simulation.md, findings).
    return str(to_checksum_address("0x" + digest.rjust(40, "d")))


@dataclass
class Services:
    """What a process rebuilds on start: the app and the wallet services around it."""

    app: Flask
    client: FlaskClient
    runtime: WalletRuntime
    dispatcher: WithdrawalDispatcher
    feed: ScriptedFeed
    market: MarketScheduler
    cold: ColdTransfers

    @property
    def ledger(self) -> Ledger:
        found: Ledger = self.app.extensions["strongroom.ledger"]
        return found

    @property
    def exchange(self) -> ExchangeService:
        found: ExchangeService = self.app.extensions["strongroom.exchange"]
        return found

    @property
    def access(self) -> AccessServices:
        found: AccessServices = self.app.extensions["strongroom.access"]
        return found

    def audit(self) -> AuditService:
        from custody.api.audit import audit

        with self.app.app_context():
            return audit()


@dataclass
class World:
    """The durable parts of one simulated platform plus the current process's services."""

    seed: int
    workdir: Path
    clock: SimClock
    chain: EmbeddedChain
    keystore: LocalKeystore
    database_url: str
    people: dict[str, Person] = field(default_factory=dict)
    traders: list[str] = field(default_factory=list)
    pinned_keys: dict[tuple[str, int], PublicKey] = field(default_factory=dict)
    services: Services | None = None
    signer: SignerMachine | None = None
    restarts: int = 0
    tampered: bool = False  # an insider changed the database behind the ledger's back
    exchange_lag_steps: int = 0  # steps the invariants leave the exchange's ledger backlog alone
    token_slot: int | None = None  # the dev token's balance mapping slot, found on first read
    market_prices: dict[str, int | None] = field(default_factory=dict)  # None: sources silent
    balance_cache: dict[object, object] = field(default_factory=dict)  # chain reads, per head block

    @property
    def svc(self) -> Services:
        assert self.services is not None, "world has no running services"
        return self.services

    @property
    def exchange_dir(self) -> Path:
        return self.workdir / "exchange"

    def start(self) -> Services:
        """Build the process-local services from the durable state (first start or a restart)."""
        runtime = build_runtime_for(self)
        settings = Settings(data_dir=self.workdir / "data", database_url=self.database_url)
        app = create_app({"TESTING": True, "CLOCK": self.clock, "KEYSTORE": self.keystore, "WALLETS": runtime,
                          "EXCHANGE_DATA_DIR": str(self.exchange_dir), "EXCHANGE_FSYNC": "never",
                          # The simulator's admin hand-sets index quotes: dev mode (docs/market.md).
                          "EXCHANGE_DEV_MODE": True},
                         settings=settings)
        dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], runtime.executor,
                                          list(ASSETS), self.clock, app.extensions["strongroom.ledger"])
        exchange: ExchangeService = app.extensions["strongroom.exchange"]
        # The outside market's prices survive a restart; the feed reading them is rebuilt.
        feed = ScriptedFeed(exchange.venue.config.indices)
        for underlying, price in sorted(self.market_prices.items()):
            if price is not None:
                feed.set(underlying, price)
        market = MarketScheduler(exchange, self.clock, feed)
        cold = cold_transfers(app.extensions["strongroom.sessions"], runtime, self.keystore,
                              app.extensions["strongroom.access"].withdrawals, self.clock, CONFIRMATIONS)
        self.services = Services(app, app.test_client(), runtime, dispatcher, feed, market, cold)
        return self.services

    def crash(self) -> None:
        """Drop the running services as a killed process would: no close, no final snapshot."""
        services = self.services
        if services is None:
            return
        durable = services.exchange.durable
        if durable is not None:
            # The kernel releases the directory lock of a dead process; buffered but
            # uncommitted journal bytes die with it (everything committed is on disk).
            durable._writer._file.close()
            if durable._lock is not None:
                os.close(durable._lock)
                durable._lock = None
        services.app.extensions["strongroom.engine"].dispose()
        self.services = None

    def restart(self) -> Services:
        """Crash, then start again from the database, the journal and the chain."""
        self.crash()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        """Shut down cleanly and remove the working directory."""
        if self.services is not None:
            try:
                self.services.exchange.close()
            finally:
                self.services.app.extensions["strongroom.engine"].dispose()
                self.services = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def build_runtime_for(world: World) -> WalletRuntime:
    from custody.db import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(world.database_url))
    ledger = Ledger(sessions, clock=world.clock)
    return build_runtime(sessions, ledger, world.keystore, world.chain.adapter(), world.clock,
                         {asset: CONFIRMATIONS for asset in ASSETS}, start_height=1)


def build_world(seed: int, traders: int, workdir: Path | None = None) -> World:
    """Create a fresh platform for ``seed``: database, keystore, chain, wallets, people."""
    rng = random.Random(f"world:{seed}")  # noqa: S311 - approver keys of a throwaway simulation
    base = workdir or Path(tempfile.mkdtemp(prefix=f"strongroom-sim-{seed}-"))
    base.mkdir(parents=True, exist_ok=True)
    url = migrated_sqlite(base / "strongroom.db")
    keystore = LocalKeystore(base / "keystore.srks", f"simulation {seed}",
                             scrypt_log2_n=KEYSTORE_SCRYPT_LOG2_N)
    chain = EmbeddedChain()
    chain.ensure_token()
    world = World(seed, base, SimClock(), chain, keystore, url)
    services = world.start()
    seed_bytes = signer_seed(rng.randbytes(32))
    world.signer = SignerMachine(seed_bytes, base / "signer")
    # The cold wallet is the offline signer's address; the platform only watches it.
    services.runtime.setup_wallets(cold_address(seed_bytes))
    # The embedded chain mines every transaction into its own block as it arrives: py-evm checks a
    # new transaction's nonce against the last block, so a mempool could hold one per sender only.
    _people(world, services, rng, traders)
    world.signer.anchors = anchors(services.cold, [world.people[name] for name in TREASURY],
                                   services.runtime)
    world.pinned_keys = {(k.name, k.version): k for k in services.audit().public_keys()}
    return world


def _people(world: World, services: Services, rng: random.Random, traders: int) -> None:
    access = services.access
    access.policies.ensure_default()
    scopes = frozenset(Scope)
    cast: list[tuple[str, frozenset[Role], bool]] = [(f"trader{i}", frozenset({Role.TRADER}), False)
                                                     for i in range(traders)]
    cast += [(name, frozenset({Role.TREASURY}), True) for name in TREASURY]
    cast += [(ADMIN, frozenset({Role.ADMIN}), False), (AUDITOR, frozenset({Role.AUDITOR}), False)]
    for username, roles, approver in cast:
        _, key = access.users.create_user(username, roles, kyc_tier=2, key_scopes=scopes, actor="simulation")
        assert key is not None
        person = Person(username, key.credentials.key_id, key.credentials.secret)
        enrolment = access.mfa.enrol(username)
        person.totp_secret = enrolment.secret_base32
        world.clock.advance(TOTP_STEP_MS)
        refusal = access.mfa.confirm(username, totp_code(enrolment.secret_base32, world.clock.now_ms))
        assert refusal is None, refusal
        if approver:
            person.approver_key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
            person.approver_key_id = f"{username}-k1"
            access.approvers.register(username, person.approver_key_id,
                                      ed25519_public_bytes(person.approver_key), actor="simulation")
        world.people[username] = person
        if Role.TRADER in roles:
            world.traders.append(username)
    for username in world.traders:
        reply = world.people[username].request(services.client, world.clock, "POST", "/api/v1/whitelist",
                                               body={"asset": "ETH", "address": destination_of(username)},
                                               mfa=True)
        assert reply.status == 201, reply.body
        reply = world.people[username].request(services.client, world.clock, "POST", "/api/v1/whitelist",
                                               body={"asset": "USDC", "address": destination_of(username)},
                                               mfa=True)
        assert reply.status == 201, reply.body
    # Past the whitelist timelock, so withdrawals meet the amount rules rather than only the delay.
    world.clock.advance(DAY_MS + 1)

