"""One whole platform in one process, on a fake clock: the composition the simulation drives.

The world owns what survives a crash (the SQLite database file, the keystore
file, the exchange journal directory, the in-process Ethereum chain, the
in-process validating Bitcoin regtest chain and the clock) and rebuilds
everything else (Flask app, ledger, wallet services of both chains, their
dispatchers, exchange service) on :meth:`World.restart`, exactly as a process
restart would.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_utils.address import to_checksum_address
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from custody.api.services import AccessServices
from custody.audit.export import PublicKey
from custody.audit.service import AuditService
from custody.bundles.service import ColdTransfers
from custody.chains.adapter import FeeQuote
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.network import address_of
from custody.chains.bitcoin.network import network as bitcoin_network
from custody.chains.bitcoin.regtest import RegtestChain
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.devchain import TOKEN_ASSET, EmbeddedChain
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
from strongroom.runtimes.bitcoin import BitcoinRuntime, build_bitcoin_runtime
from strongroom.runtimes.ethereum import WalletRuntime, build_runtime
from strongroom.settings import Settings
from strongroom.simulation.client import TOTP_STEP_MS, Person
from strongroom.simulation.clock import SimClock
from strongroom.simulation.cold import (
    SignerMachine,
    anchors,
    cold_address,
    cold_descriptor,
    cold_transfers,
    signer_seed,
)

CONFIRMATIONS = 2
ASSETS = ("ETH", "USDC")  # the Ethereum chain's assets
BTC = "BTC"
BTC_CONFIRMATIONS = 2
BTC_FEE_RATE_SAT_VB = 2  # the regtest node's normal fee estimate
ALL_ASSETS = (*ASSETS, BTC)
COSIGNERS = 3  # the Bitcoin cold wallet is a 2-of-3 multisig of the offline signers
KEYSTORE_SCRYPT_LOG2_N = 10  # cheap: the simulation's keystore protects nothing real
DAY_MS = 86_400_000
TREASURY = ("treasury1", "treasury2", "treasury3")
ADMIN = "operator"
AUDITOR = "auditor"

SQLITE = "sqlite"

_template_lock = threading.Lock()
_template: Path | None = None
_pg_templates: dict[str, str] = {}  # admin URL -> name of this process's migrated template database


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


def _drop_postgres(admin_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _postgres_template(admin_url: str) -> str:
    """Return this process's migrated PostgreSQL template database on ``admin_url`` (made once)."""
    from sqlalchemy import create_engine, text

    with _template_lock:
        name = _pg_templates.get(admin_url)
        if name is None:
            name = f"sr_simtpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                                  isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            finally:
                admin.dispose()
            from sqlalchemy.engine import make_url

            url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
            migrations.upgrade(url)
            atexit.register(_drop_postgres, admin_url, name)
            _pg_templates[admin_url] = name
        return name


def scratch_postgres(admin_url: str, stack: contextlib.ExitStack, seed: int) -> str:
    """Create a fresh migrated database for one run on the PostgreSQL server of ``admin_url``;
    ``stack`` drops it when the world closes. Return its URL."""
    from custody.db import scratch_postgres_database

    template = _postgres_template(admin_url)
    name = f"sr_sim_{seed % 10**9}_{uuid.uuid4().hex[:10]}"
    return stack.enter_context(scratch_postgres_database(admin_url, name, template))


def eth_head(world: World) -> int:
    """Return the Ethereum head's number straight from the embedded chain (web3's ``block_number``
    through the tester costs about a millisecond; the simulator reads it several times a step)."""
    return int(world.chain.tester.backend.chain.get_canonical_head().block_number)


def destination_of(username: str) -> str:
    """Return the outside address ``username`` withdraws to (unique per trader, holds nothing else)."""
    digest = username.encode().hex()[-38:]
    # EIP-55 checksummed: the cold path refuses any other spelling (see docs/simulation.md, findings).
    return str(to_checksum_address("0x" + digest.rjust(40, "d")))


def btc_destination_of(username: str) -> str:
    """Return the outside regtest P2WPKH address ``username`` withdraws BTC to (nobody here holds its key)."""
    program = hashlib.sha256(b"strongroom-sim-btc-destination:" + username.encode()).digest()[:20]
    from embit.script import Script  # type: ignore[import-untyped, unused-ignore]

    found = address_of(Script(b"\x00\x14" + program), bitcoin_network("regtest"))
    assert found is not None
    return found


def destination_for(username: str, asset: str) -> str:
    """Return ``username``'s outside destination for ``asset`` (an Ethereum or a Bitcoin address)."""
    return btc_destination_of(username) if asset == BTC else destination_of(username)


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
    btc_runtime: BitcoinRuntime
    btc_dispatcher: WithdrawalDispatcher
    runtime_engine: Any = None  # the wallet runtimes' own engine (a second connection pool)

    def runtime_for(self, chain: str) -> WalletRuntime | BitcoinRuntime:
        """Return the wallet runtime of ``chain`` (``ethereum`` or ``bitcoin``)."""
        return self.btc_runtime if chain == "bitcoin" else self.runtime

    def dispatcher_for(self, chain: str) -> WithdrawalDispatcher:
        return self.btc_dispatcher if chain == "bitcoin" else self.dispatcher

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
    btc: RegtestChain
    keystore: LocalKeystore
    database_url: str
    people: dict[str, Person] = field(default_factory=dict)
    traders: list[str] = field(default_factory=list)
    pinned_keys: dict[tuple[str, int], PublicKey] = field(default_factory=dict)
    services: Services | None = None
    signer: SignerMachine | None = None  # cosigner 0: holds the Ethereum cold key too
    cosigners: list[SignerMachine] = field(default_factory=list)  # the Bitcoin 2-of-3 cold wallet's
    restarts: int = 0
    tampered: bool = False  # an insider changed the database behind the ledger's back
    exchange_lag_steps: int = 0  # steps the invariants leave the exchange's ledger backlog alone
    token_slot: int | None = None  # the dev token's balance mapping slot, found on first read
    market_prices: dict[str, int | None] = field(default_factory=dict)  # None: sources silent
    balance_cache: dict[object, object] = field(default_factory=dict)  # chain reads, per head block
    check_cache: dict[str, Any] = field(default_factory=dict)  # reads shared by one round of checks
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # e.g. a scratch database
    # Faults that outlive a process, because they are the network's or another machine's:
    client_skew_ms: int = 0  # the traders' and treasury's clocks against the server's
    jobs_skew_ms: int = 0  # the wallet/dispatcher process's clock against the API process's
    stall_until_height: int = 0  # below this head height the network swallows broadcasts (stuck)
    stall_drop: bool = False  # swallowed transactions are lost (else delivered when the stall ends)
    stall_reverse: bool = False  # deliver the swallowed ones newest first (a replacement before its original)
    stalled: list[bytes] = field(default_factory=list)  # swallowed raw transactions, in arrival order
    fee_multiplier: int = 1  # a fee spike: the node quotes this many times the real fees
    fee_spike_until_height: int = 0
    # The Bitcoin network's faults: miners leave the mempool alone below this height (stuck
    # transactions), and the node's fee estimate is spiked until a height.
    btc_stall_until_height: int = 0
    btc_fee_spike_until_height: int = 0

    @property
    def svc(self) -> Services:
        assert self.services is not None, "world has no running services"
        return self.services

    @property
    def exchange_dir(self) -> Path:
        return self.workdir / "exchange"

    def jobs_clock(self) -> int:
        """Return the time on the jobs process's clock (the server's plus its skew)."""
        return self.clock.now_ms + self.jobs_skew_ms

    def start(self) -> Services:
        """Build the process-local services from the durable state (first start or a restart)."""
        runtime, btc_runtime, runtime_engine = build_runtime_for(self)
        settings = Settings(data_dir=self.workdir / "data", database_url=self.database_url)
        app = create_app({"TESTING": True, "CLOCK": self.clock, "KEYSTORE": self.keystore, "WALLETS": runtime,
                          "CHAIN_RUNTIMES": {"bitcoin": btc_runtime},
                          "EXCHANGE_DATA_DIR": str(self.exchange_dir), "EXCHANGE_FSYNC": "never",
                          # The simulator's admin hand-sets index quotes: dev mode (docs/market.md).
                          "EXCHANGE_DEV_MODE": True,
                          # Nobody logs in to the console here: argon2id at its real cost would make
                          # every (re)start ~0.4 CPU-s slower for a dummy hash.
                          "CONSOLE_PASSWORD_HASHER": CHEAP_HASHER},
                         settings=settings)
        fast_sqlite(app.extensions["strongroom.engine"])
        dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], runtime.executor,
                                          list(ASSETS), self.jobs_clock, app.extensions["strongroom.ledger"])
        btc_dispatcher = WithdrawalDispatcher(app.extensions["strongroom.sessions"], btc_runtime.executor,
                                              [BTC], self.jobs_clock, app.extensions["strongroom.ledger"])
        exchange: ExchangeService = app.extensions["strongroom.exchange"]
        # The outside market's prices survive a restart; the feed reading them is rebuilt.
        feed = ScriptedFeed(exchange.venue.config.indices)
        for underlying, price in sorted(self.market_prices.items()):
            if price is not None:
                feed.set(underlying, price)
        market = MarketScheduler(exchange, self.clock, feed)
        cold = cold_transfers(app.extensions["strongroom.sessions"], runtime, btc_runtime, self.keystore,
                              app.extensions["strongroom.access"].withdrawals, self.jobs_clock, CONFIRMATIONS,
                              BTC_CONFIRMATIONS)
        self.services = Services(app, app.test_client(), runtime, dispatcher, feed, market, cold,
                                 btc_runtime, btc_dispatcher, runtime_engine)
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
        services.runtime_engine.dispose()
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
                self.services.runtime_engine.dispose()
                self.services = None
        self.resources.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def fast_sqlite(engine: Any) -> None:
    """On SQLite, commit without fsync (``synchronous = OFF``, WAL kept). The simulation's crashes are
    process deaths, never power losses: what a killed process committed is in the OS cache and
    survives either way, so nothing a crash could lose is hidden; ~5 ms of fsync per commit is saved.
    Pooled connections opened with the platform's ``FULL`` are dropped; new ones get ``OFF``."""
    if engine.dialect.name != "sqlite":
        return

    def _no_fsync(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous = OFF")
        cursor.close()

    event.listen(engine, "connect", _no_fsync)
    engine.dispose()


def build_runtime_for(world: World) -> tuple[WalletRuntime, BitcoinRuntime, Any]:
    """Build the wallet jobs' runtimes of both chains on their own engine (one jobs process)."""
    from custody.db import make_engine, make_session_factory

    engine = make_engine(world.database_url)
    fast_sqlite(engine)
    sessions = make_session_factory(engine)
    # The wallet jobs run in their own process in production: their clock may be skewed.
    ledger = Ledger(sessions, clock=world.jobs_clock)
    adapter = SimAdapter(world, world.chain.web3, {TOKEN_ASSET: world.chain.ensure_token()})
    runtime = build_runtime(sessions, ledger, world.keystore, adapter, world.jobs_clock,
                            {asset: CONFIRMATIONS for asset in ASSETS}, start_height=1)
    btc_adapter = BitcoinAdapter(world.btc, bitcoin_network("regtest"))
    btc_runtime = build_bitcoin_runtime(sessions, ledger, world.keystore, btc_adapter, world.jobs_clock,
                                        {BTC: BTC_CONFIRMATIONS}, start_height=BTC_START_HEIGHT + 1)
    return runtime, btc_runtime, engine


# Blocks mined before the platform starts watching: the regtest faucet's coinbases mature after
# 100 blocks, and every deposit in one block spends another mature coinbase of the faucet.
BTC_START_HEIGHT = 200


def btc_weather(world: World) -> None:
    """End a Bitcoin fee spike once the chain has passed its height."""
    if world.btc_fee_spike_until_height and world.btc.height >= world.btc_fee_spike_until_height:
        world.btc.fee_rate_sat_vb = BTC_FEE_RATE_SAT_VB
        world.btc_fee_spike_until_height = 0


def mine_btc(world: World, blocks: int) -> None:
    """Mine ``blocks`` Bitcoin blocks; while a stall lasts, miners leave the mempool out (stuck)."""
    for _ in range(blocks):
        world.btc.mine(1, include_mempool=world.btc.height + 1 >= world.btc_stall_until_height)
        btc_weather(world)


class SimAdapter(EthereumAdapter):
    """The embedded chain as the platform's node sees it, with the network's faults: while a stall
    lasts, broadcasts are swallowed (a stuck transaction) and delivered, or lost, when it ends; while
    a fee spike lasts, the node quotes fees ``fee_multiplier`` times the real ones."""

    def __init__(self, world: World, web3: Any, tokens: dict[str, str]) -> None:
        super().__init__(web3, tokens)
        self._world = world

    def broadcast(self, raw: bytes) -> str:
        world = self._world
        if self.head_height() < world.stall_until_height:
            from web3 import Web3

            if not world.stall_drop:
                world.stalled.append(raw)
            return str(Web3.to_hex(Web3.keccak(raw)))
        return super().broadcast(raw)

    def balance(self, address: str, asset: str, at_height: int | None = None) -> int:
        """Answer a balance at the head from the embedded chain's state (what ``eth_call`` of
        ``balanceOf`` would answer, without ~10 ms of web3 and EVM per read); any other height, or the
        token's balance slot not yet verified against ``balanceOf`` (invariants.chain_balance does
        that once), goes through the node as before."""
        world = self._world
        if at_height is None or at_height == eth_head(world):
            checksum = self.normalize_address(address)
            if asset == "ETH":
                return int(world.chain.tester.get_balance(checksum))
            if asset == TOKEN_ASSET and world.token_slot is not None and world.token_slot >= 0:
                return token_slot_value(world, self.token_address(asset), checksum, world.token_slot)
        return super().balance(address, asset, at_height)

    def fee_quote(self) -> FeeQuote:
        quote = super().fee_quote()
        world = self._world
        if self.head_height() >= world.fee_spike_until_height or world.fee_multiplier == 1:
            return quote
        return FeeQuote(quote.max_fee_per_gas * world.fee_multiplier,
                        quote.max_priority_fee_per_gas * world.fee_multiplier)


def token_slot_value(world: World, token: str, holder: str, slot: int) -> int:
    """Read ``holder``'s entry of the token's balance mapping at storage ``slot`` (Solidity layout)."""
    from eth_utils.address import to_canonical_address
    from eth_utils.crypto import keccak

    key = keccak(bytes(12) + to_canonical_address(holder) + slot.to_bytes(32, "big"))
    raw = world.chain.tester.get_storage_at(token, "0x" + key.hex())
    return int(raw, 16) if isinstance(raw, str) else int.from_bytes(raw, "big")


def deliver_stalled(world: World) -> int:
    """Once the stall is over, hand the swallowed transactions to the chain (a conflicting one, e.g. the
    original of a replacement already mined, is refused by the chain as a node would drop it)."""
    if not world.stalled or eth_head(world) < world.stall_until_height:
        return 0
    held, world.stalled = world.stalled, []
    if world.stall_reverse:
        held.reverse()
    delivered = 0
    for raw in held:
        try:
            world.chain.web3.eth.send_raw_transaction(raw)
            delivered += 1
        except Exception:  # noqa: S112 - the network drops a transaction the chain refuses
            continue
    return delivered


def heal(world: World) -> None:
    """End every network and clock fault (Jepsen's heal before the final read)."""
    world.stall_until_height = 0
    deliver_stalled(world)
    world.fee_multiplier, world.fee_spike_until_height = 1, 0
    world.btc_stall_until_height = 0
    world.btc.fee_rate_sat_vb, world.btc_fee_spike_until_height = BTC_FEE_RATE_SAT_VB, 0
    world.client_skew_ms = world.jobs_skew_ms = 0


@contextlib.contextmanager
def seeded_wallet_seeds(rng: random.Random) -> Iterator[None]:
    """Draw the hot and deposit wallets' seeds from the simulation's seed instead of the OS CSPRNG, so
    addresses, transaction sizes, gas and txids (and so the final state) are the same in every run of
    a seed. Simulation only: these wallets guard nothing."""
    from custody.wallets import hd

    real = hd.generate_seed
    hd.generate_seed = lambda: rng.randbytes(hd.SEED_BYTES)
    try:
        yield
    finally:
        hd.generate_seed = real


def build_world(seed: int, traders: int, workdir: Path | None = None, database: str = SQLITE) -> World:
    """Create a fresh platform for ``seed``: database, keystore, chain, wallets, people.

    ``database`` is ``"sqlite"`` (a file in the work directory) or the URL of a PostgreSQL server
    on which a scratch database is created for this run and dropped when the world closes."""
    rng = random.Random(f"world:{seed}")  # noqa: S311 - approver keys of a throwaway simulation
    base = workdir or Path(tempfile.mkdtemp(prefix=f"strongroom-sim-{seed}-"))
    base.mkdir(parents=True, exist_ok=True)
    resources = contextlib.ExitStack()
    if database == SQLITE:
        url = migrated_sqlite(base / "strongroom.db")
    elif database.startswith("postgresql"):
        url = scratch_postgres(database, resources, seed)
    else:
        raise ValueError(f"database was {database!r}, expected 'sqlite' or a postgresql:// server URL")
    keystore = LocalKeystore(base / "keystore.srks", f"simulation {seed}",
                             scrypt_log2_n=KEYSTORE_SCRYPT_LOG2_N)
    chain = EmbeddedChain()
    chain.ensure_token()
    btc = RegtestChain(fee_rate_sat_vb=BTC_FEE_RATE_SAT_VB)
    btc.mine(BTC_START_HEIGHT)
    world = World(seed, base, SimClock(), chain, btc, keystore, url, resources=resources)
    services = world.start()
    seed_bytes = signer_seed(rng.randbytes(32))
    world.signer = SignerMachine(seed_bytes, base / "signer")
    wallet_rng = random.Random(f"wallets:{seed}")  # noqa: S311 - throwaway simulation keys
    with seeded_wallet_seeds(wallet_rng):
        # The cold wallet is the offline signer's address; the platform only watches it.
        services.runtime.setup_wallets(cold_address(seed_bytes))
    # Bitcoin's cold wallet is a 2-of-3 multisig: the same signer plus two more cosigners, each
    # with its own seed and signing log (drawn after the approvers' keys, so those stay as they were).
    cosigner_rng = random.Random(f"cosigners:{seed}")  # noqa: S311 - throwaway simulation keys
    world.cosigners = [world.signer] + [SignerMachine(signer_seed(cosigner_rng.randbytes(32)),
                                                      base / f"signer-{n}") for n in range(1, COSIGNERS)]
    with seeded_wallet_seeds(wallet_rng):
        services.btc_runtime.setup_wallets(cold_descriptor([m.seed for m in world.cosigners]))
    # The embedded chain mines every transaction into its own block as it arrives: py-evm checks a
    # new transaction's nonce against the last block, so a mempool could hold one per sender only.
    _people(world, services, rng, traders)
    signer_anchors = anchors(services.cold, [world.people[name] for name in TREASURY], services.runtime)
    for machine in world.cosigners:
        machine.anchors = signer_anchors
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
        reply = world.people[username].request(services.client, world.clock, "POST", "/api/v1/whitelist",
                                               body={"asset": BTC, "address": btc_destination_of(username)},
                                               mfa=True)
        assert reply.status == 201, reply.body
    # Past the whitelist timelock, so withdrawals meet the amount rules rather than only the delay.
    world.clock.advance(DAY_MS + 1)

