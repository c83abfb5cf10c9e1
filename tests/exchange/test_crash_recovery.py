"""Kill a real exchange process with SIGKILL mid-stream, recover, and check the ledger agrees."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from custody.db import make_engine, make_session_factory
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from exchange.commands import Deposit, Drain, VenueCommand
from exchange.engine.codes import ResultCode
from exchange.engine.journal import JournalCorrupt
from exchange.engine.messages import NewOrder
from exchange.instruments import load_instruments
from exchange.recovery import DurableVenue, list_snapshots, recover
from exchange.service import ExchangeService
from exchange.venue import InvalidCommand, Venue
from policies.request_signing import sign_request
from strongroom.cli import main as cli_main

from .venue_streams import apply_batch, ledger_deposits, random_batches

SEED = 4242
BATCHES = 20_000
SNAPSHOT_EVERY = 150
KILL_AFTER_BATCHES = 400
KILL_TIMEOUT_S = 120
WORKER = Path(__file__).with_name("venue_crash_worker.py")


class Counter:
    """A command log that only counts records (the reference run)."""

    def __init__(self) -> None:
        self.n = 0

    def record(self, cmd: VenueCommand) -> None:
        self.n += 1


def reference_at(records: int, batches: list[list[tuple[object, ...]]]) -> tuple[Venue, int]:
    """Run batches until exactly ``records`` journal records were written; return (venue, batches run)."""
    v = Venue(load_instruments())
    log = Counter()
    v.journal = log
    for index, batch in enumerate(batches):
        if log.n == records:
            return v, index
        apply_batch(v, batch)
        v.drain()
        assert log.n <= records, "recovery stopped inside a batch"
    assert log.n == records
    return v, len(batches)


def test_sigkill_mid_stream_recovers_and_the_ledger_agrees(ledger: Ledger, database_url: str,
                                                            tmp_path: Path) -> None:
    directory = tmp_path / "exchange"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), database_url, str(SEED), str(BATCHES),
         str(SNAPSHOT_EVERY)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + KILL_TIMEOUT_S
    done = 0
    while time.monotonic() < deadline and done < KILL_AFTER_BATCHES:
        line = proc.stdout.readline()
        if not line:
            break
        done = int(line)
    assert proc.poll() is None, f"worker stopped early: {proc.stderr.read() if proc.stderr else ''}"
    assert len(list_snapshots(directory)) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    batches = random_batches(SEED, 1_000)
    svc = ExchangeService.open(ledger, load_instruments(), directory, snapshot_every=SNAPSHOT_EVERY)
    assert svc.durable is not None
    recovered_seq = svc.durable.command_seq
    reference, ran = reference_at(recovered_seq, batches)
    assert ran >= done  # every batch the worker reported finished survived
    assert svc.venue.state_hash() == reference.state_hash()
    assert svc.reconcile() == []
    svc.venue.clearing.check_invariants()

    # The recovered service carries on like an uninterrupted run, and the ledger keeps agreeing.
    for index, batch in enumerate(batches[ran:ran + 100], ran):
        for owner, amount, tid in ledger_deposits(index, batch):
            svc.credit_deposit(owner, amount, tid)
        with svc.command() as v:
            apply_batch(v, batch)
        apply_batch(reference, batch)
        reference.drain()
    assert svc.venue.state_hash() == reference.state_hash()
    assert svc.reconcile() == []
    svc.close()


# ------------------------------------------------------------------ refused orders and the journal

BTC_PRICE = 60_000 * 1_000_000
BAD_ENUMS = [("side", "sideways"), ("type", "iceberg"), ("tif", "GTD"), ("stp", "cancel_nobody"),
             ("trigger", "index")]


def _order(oid: str, price: int, **fields: object) -> NewOrder:
    values: dict[str, object] = {"side": "buy", "type": "limit", "trigger": "last", **fields}
    if values["type"] == "limit" and "trigger" in fields:
        values["type"], values["trigger_price"] = "stop_limit", price + 1_000_000
    return NewOrder(id=oid, account="a", qty=10, price=price, **values)  # type: ignore[arg-type]


def _started(directory: Path) -> DurableVenue:
    durable, _ = DurableVenue.open(directory, load_instruments())
    v = durable.venue
    v.deposit("a", 10**12)
    v.set_mark("BTC-PERP", BTC_PRICE, BTC_PRICE)
    v.drain()
    durable.commit()
    return durable


@pytest.mark.parametrize(("field", "value"), BAD_ENUMS)
def test_venue_refuses_an_unjournalable_order_before_changing_anything(
        tmp_path: Path, field: str, value: str) -> None:
    durable = _started(tmp_path)
    v = durable.venue
    before, seq = v.state_hash(), durable.command_seq
    bad = _order("bad", BTC_PRICE, **{field: value})
    with pytest.raises(InvalidCommand) as refused:
        v.place("BTC-PERP", bad)
    assert refused.value.code in (ResultCode.BAD_SIDE, ResultCode.BAD_ORDER_TYPE, ResultCode.BAD_TRIGGER)
    v.drain()
    assert (v.state_hash(), durable.command_seq) == (before, seq)
    durable.close()
    assert recover(tmp_path, load_instruments()).venue.state_hash() == before


@pytest.mark.parametrize(("field", "value"), BAD_ENUMS)
def test_refused_order_journaled_by_an_older_version_replays_to_the_same_state(
        tmp_path: Path, field: str, value: str, caplog: pytest.LogCaptureFixture) -> None:
    durable = _started(tmp_path)
    v = durable.venue
    # What versions before validation did: the order went to the book unchecked (which
    # rejected it) and into the journal, where it no longer decodes into NewOrder's enums.
    legacy = _order("old", BTC_PRICE - 1_000_000, **{field: value})
    assert any(type(e).__name__ == "Rejected" for e in v._place("BTC-PERP", legacy).events)
    assert v.place("BTC-PERP", NewOrder(id="ok", account="a", side="buy", qty=10,
                                        price=BTC_PRICE - 1_000_000)).code == 0
    postings, _ = v.drain()
    durable.commit()
    expected = v.state_hash()
    durable.close()
    with caplog.at_level("WARNING", logger="exchange.journal"):
        rec = recover(tmp_path, load_instruments())
    assert rec.venue.state_hash() == expected
    assert [p[0] for p in rec.postings][-len(postings):] == [p[0] for p in postings]
    assert "refused by validation" in caplog.text
    reopened, _ = DurableVenue.open(tmp_path, load_instruments())
    assert list(reopened.venue.books["BTC-PERP"].orders) == ["ok"]
    reopened.close()


def test_undecodable_record_of_another_kind_is_corruption_naming_the_record(tmp_path: Path) -> None:
    durable = _started(tmp_path)
    durable.record(Deposit("a", "lots"))  # type: ignore[arg-type]
    durable.record(Drain())
    durable.commit()
    durable.close()
    with pytest.raises(JournalCorrupt, match=r"record seq \d+ at byte \d+"):
        recover(tmp_path, load_instruments())


# ------------------------------------------------------------------ the same through `strongroom serve`

SERVE_START_TIMEOUT_S = 90
USDC_MINOR = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A `strongroom serve` process and a signed HTTP client for one of its users."""

    def __init__(self, env: dict[str, str], key_id: str, secret: str) -> None:
        self.env, self.key_id, self.secret = env, key_id, secret
        self.base = f"http://127.0.0.1:{env['STRONGROOM_PORT']}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from strongroom.cli import main; main()", "serve"], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"strongroom serve stopped at start: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError("strongroom serve did not answer /health in time")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def quote_btc(self) -> None:
        """Hand-set the BTC index from three sources (dev mode), so orders can be margined."""
        for source in ("coinbase", "kraken", "bitstamp"):
            r = self.call("POST", "/api/v1/exchange/operator/quotes",
                          {"underlying": "BTC", "source": source, "price": BTC_PRICE})
            assert r.status_code == 200, r.text

    def call(self, method: str, path: str, body: object = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body).encode()
        headers = sign_request(key_id=self.key_id, secret=self.secret, timestamp_ms=int(time.time() * 1000),
                               method=method, path=path, body=raw)
        if body is not None:
            headers["Content-Type"] = "application/json"
        time.sleep(0.002)  # never two identical signatures in one millisecond
        return requests.request(method, self.base + path, data=raw, headers=headers, timeout=10)


def test_refused_orders_then_sigkill_and_restart_of_strongroom_serve(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
           "STRONGROOM_KEYSTORE_PASSPHRASE": "serve test passphrase, not a secret",
           "STRONGROOM_EXCHANGE_DEV_MODE": "1", "STRONGROOM_EXCHANGE_FEED": "none",
           "STRONGROOM_PORT": str(_free_port())}
    created = CliRunner().invoke(cli_main, ["users", "create", "--username", "trader1", "--role", "trader",
                                            "--role", "admin", "--kyc-tier", "2"], env=env)
    assert created.exit_code == 0, created.output
    key_id = re.search(r"api key id:\s+(\S+)", created.output)
    secret = re.search(r"api key secret:\s+(\S+)", created.output)
    assert key_id and secret
    ledger = Ledger(make_session_factory(make_engine(sqlite_url)))
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET)
    spot = ledger.ensure_account("trader1", "USDC", AccountKind.USER_AVAILABLE)
    ledger.transfer(TransferRequest(id="fund-trader1", debit_account=hot.id, credit_account=spot.id,
                                    amount=10_000 * USDC_MINOR, asset="USDC"))
    served = Served(env, key_id[1], secret[1])
    served.start()
    try:
        base = "/api/v1/exchange"
        r = served.call("POST", f"{base}/collateral/deposit", {"amount": 5_000 * USDC_MINOR})
        assert r.status_code == 200, r.text
        served.quote_btc()
        order = {"symbol": "BTC-PERP", "side": "buy", "qty": 10, "type": "stop_limit",
                 "price": BTC_PRICE - 1_000 * USDC_MINOR, "trigger_price": BTC_PRICE + 1_000 * USDC_MINOR}
        for n, (field, value) in enumerate(BAD_ENUMS):
            r = served.call("POST", f"{base}/orders", dict(order, id=f"bad{n}", **{field: value}))
            assert r.status_code == 400, r.text
        assert served.call("POST", f"{base}/orders", dict(order, id="kept")).status_code == 201
        served.kill()  # no final snapshot: the next start replays the journal
        served.start()
        orders = served.call("GET", f"{base}/orders").json()["orders"]
        assert [o["id"] for o in orders] == ["kept"]
        served.quote_btc()  # the index went stale while the server was down
        assert served.call("POST", f"{base}/orders", dict(order, id="after")).status_code == 201
    finally:
        if served.proc is not None and served.proc.poll() is None:
            served.proc.terminate()
            served.proc.wait(timeout=30)


def test_cancel_all_is_journaled_and_replays_to_the_same_state(tmp_path: Path) -> None:
    durable = _started(tmp_path)
    v = durable.venue
    v.deposit("b", 10**12)
    for n, account in enumerate(("a", "a", "b")):
        order = NewOrder(id=f"o{n}", account=account, side="buy", qty=10,
                         price=BTC_PRICE - (n + 1) * 1_000_000)
        assert v.place("BTC-PERP", order).code == 0
    events = v.cancel_all("BTC-PERP", "a")
    assert sorted(e.id for e in events if type(e).__name__ == "Cancelled") == ["o0", "o1"]
    assert list(v.books["BTC-PERP"].orders) == ["o2"]
    assert v.clearing.accounts["a"].order_im == 0
    v.drain()
    durable.commit()
    expected = v.state_hash()
    durable.close()
    assert recover(tmp_path, load_instruments()).venue.state_hash() == expected


@pytest.mark.parametrize("call", [
    lambda v: v.deposit("a", 2**64), lambda v: v.withdraw("a\ud800", 1), lambda v: v.seed_insurance(2**70),
    lambda v: v.quote("BTC", "src\ud800", BTC_PRICE, 1), lambda v: v.cancel("BTC-PERP", "\ud800", "a"),
    lambda v: v.place("BTC-PERP\ud800", NewOrder(id="x", account="a", side="buy", qty=1, price=1)),
    lambda v: v.place("BTC-PERP", NewOrder(id="x", account="a", side="buy", qty=2**64, price=1)),
])
def test_venue_refuses_what_the_journal_cannot_hold_before_any_change(tmp_path: Path, call: Any) -> None:
    durable = _started(tmp_path)
    v = durable.venue
    before, seq = v.state_hash(), durable.command_seq
    with pytest.raises(InvalidCommand):
        call(v)
    v.drain()
    assert (v.state_hash(), durable.command_seq) == (before, seq)
    durable.close()
    assert recover(tmp_path, load_instruments()).venue.state_hash() == before
