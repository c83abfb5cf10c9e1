"""Audit benchmarks: offline verification speed, checkpoint creation, proof generation.

    python benchmarks/audit_bench.py [--entries 1000000] [--checkpoint-entries 100000] [--only verify]

1. Verify: a synthetic export of ``--entries`` entries (wallet deposits, trades,
   holds posted and voided; a signed checkpoint every 100k entries) is written
   without a database, then ``strongroom-audit verify`` logic runs over it on
   one core, with the compiled fast path (custody/audit/fastscan.py; built into a
   scratch directory if it is not built) and in pure Python. Target: >= 1M entries/s.
2. Checkpoint: ``--checkpoint-entries`` transfers go into a SQLite ledger, then
   one checkpoint over all of them is timed (reads the journal, re-checks the
   chain, builds the Merkle root and totals, signs).
3. Proofs: inclusion and consistency proofs from the service (first call builds
   the cached tree) and from an in-memory tree of ``--entries`` leaves.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, Checkpoint, TotalsAccumulator
from custody.audit.export import AccountRecord, ExportWriter, Manifest, PublicKey, parse_keys, read_json
from custody.audit.merkle import Frontier, MerkleTree, leaf_hash
from custody.audit.verify import verify_export
from custody.ledger.entry import GENESIS_HASH, AccountKind, Entry, TransferKind, chain_hash

USERS = 1_000
CHECKPOINT_EVERY = 100_000
PAGE = 10_000
NOW_MS = 1_767_225_600_000


class _Book:
    """Synthetic ledger state: balances that always respect the accounts' constraints."""

    def __init__(self) -> None:
        self.hot, self.flight = 1, 2
        self.users = list(range(3, 3 + USERS))
        self.balance = dict.fromkeys(self.users, 0)
        self.accounts = {self.hot: [0, 0, 0, 0], self.flight: [0, 0, 0, 0]}
        self.accounts.update({u: [0, 0, 0, 0] for u in self.users})
        self.holds: list[tuple[str, int, int]] = []

    def move(self, debit: int, credit: int, amount: int, pending: bool = False) -> None:
        offset = 0 if pending else 1
        self.accounts[debit][offset] += amount
        self.accounts[credit][2 + offset] += amount

    def entries(self, count: int, rng: random.Random) -> Iterator[Entry]:
        kinds = sorted(_account_kinds(self).items())
        for seq, (account, (kind, flags)) in enumerate(kinds, start=1):
            # Every account is opened by a hash-chained entry that records its terms.
            yield Entry(seq=seq, id=f"open:{account}", kind=TransferKind.OPEN, debit_account=account,
                        credit_account=account, asset="BTC", amount=0, pending_id=None, timeout_s=0,
                        expires_ms=None, code=0, reference="", timestamp_ms=NOW_MS,
                        actor="service:bench", account_owner=_owner(account),
                        account_kind=kind.value, account_flags=flags)
        for seq in range(len(kinds) + 1, count + 1):
            yield self._next(seq, rng)

    def _next(self, seq: int, rng: random.Random) -> Entry:
        roll, user = rng.random(), rng.choice(self.users)
        base = {"seq": seq, "asset": "BTC", "timeout_s": 0, "expires_ms": None, "code": 0,
                "timestamp_ms": NOW_MS + seq, "pending_id": None, "actor": "service:bench"}
        if roll < 0.2 or self.balance[user] < 1_000:
            amount = rng.randrange(10_000, 1_000_000)
            self.balance[user] += amount
            self.move(self.hot, user, amount)
            return Entry(id=f"dep-{seq}", kind=TransferKind.SINGLE, debit_account=self.hot,
                         credit_account=user, amount=amount, reference="deposit", **base)
        if roll < 0.3 and not self.holds:
            amount = rng.randrange(1, self.balance[user] // 2)
            self.balance[user] -= amount
            self.move(user, self.flight, amount, pending=True)
            self.holds.append((f"hold-{seq}", user, amount))
            return Entry(id=f"hold-{seq}", kind=TransferKind.PENDING, debit_account=user,
                         credit_account=self.flight, amount=amount, reference="withdrawal", **base)
        if roll < 0.4 and self.holds:
            hold_id, holder, amount = self.holds.pop()
            self.move(holder, self.flight, -amount, pending=True)
            posted = amount // 2
            self.move(holder, self.flight, posted)
            self.balance[holder] += amount - posted
            return Entry(id=f"post-{seq}", kind=TransferKind.POST, debit_account=holder,
                         credit_account=self.flight, amount=posted, reference="", **{
                             **base, "pending_id": hold_id})
        other = rng.choice(self.users)
        while other == user:
            other = rng.choice(self.users)
        amount = rng.randrange(1, self.balance[user] // 4 + 2)
        self.balance[user] -= amount
        self.balance[other] += amount
        self.move(user, other, amount)
        return Entry(id=f"trade-{seq}", kind=TransferKind.SINGLE, debit_account=user,
                     credit_account=other, amount=amount, reference="trade", **base)


def write_synthetic_export(directory: Path, count: int) -> None:
    """Write a signed export of ``count`` synthetic entries (no database)."""
    rng, book, key = random.Random(7), _Book(), Ed25519PrivateKey.generate()
    writer = ExportWriter(directory)
    frontier, totals, checkpoints = Frontier(), TotalsAccumulator(), []
    held: dict[str, int] = {}
    state = {"prev": GENESIS_HASH}

    def pages() -> Iterator[list[tuple[Entry, str]]]:
        page: list[tuple[Entry, str]] = []
        for entry in book.entries(count, rng):
            raw = entry.to_bytes()
            state["prev"] = chain_hash(state["prev"], raw)
            frontier.append_hash(leaf_hash(raw))
            if entry.kind is TransferKind.PENDING:
                held[entry.id] = entry.amount
            totals.add(entry, held.pop(entry.pending_id, 0) if entry.pending_id else 0)
            page.append((entry, state["prev"]))
            if entry.seq % CHECKPOINT_EVERY == 0 or entry.seq == count:
                checkpoints.append(_checkpoint(checkpoints, entry.seq, frontier, state["prev"], totals, key))
            if len(page) == PAGE:
                yield page
                page = []
        yield page

    written, head_seq, head_hash = writer.write_entries(pages())
    writer.write_checkpoints(checkpoints)
    records = [AccountRecord(i, _owner(i), "BTC", kind.value, flags, NOW_MS, *book.accounts[i])
               for i, (kind, flags) in _account_kinds(book).items()]
    writer.write_accounts(records)
    raw_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    writer.write_keys([PublicKey("ledger-checkpoint", 1, "ed25519", raw_key)])
    writer.write_lines("snapshots.jsonl", [])
    writer.write_lines("liabilities.jsonl", [])
    writer.write_manifest(Manifest(NOW_MS, head_seq, head_hash, written, len(checkpoints), len(records)))


def _owner(account: int) -> str:
    return "platform" if account < 3 else f"user{account}"


def _account_kinds(book: _Book) -> dict[int, tuple[AccountKind, int]]:
    kinds = {book.hot: (AccountKind.HOT_WALLET, 2), book.flight: (AccountKind.WITHDRAWALS_IN_FLIGHT, 0)}
    kinds.update({user: (AccountKind.USER_AVAILABLE, 1) for user in book.users})
    return kinds


def _checkpoint(previous: list[Checkpoint], seq: int, frontier: Frontier, head: str,
                totals: TotalsAccumulator, key: Ed25519PrivateKey) -> Checkpoint:
    prev = previous[-1] if previous else None
    unsigned = Checkpoint(
        number=len(previous) + 1, first_seq=1 if prev is None else prev.last_seq + 1, last_seq=seq,
        root=frontier.root().hex(), head_hash=head,
        prev_checkpoint=FIRST_PREV_CHECKPOINT if prev is None else prev.hash(),
        totals=totals.snapshot(), timestamp_ms=NOW_MS + seq, key_name="ledger-checkpoint", key_version=1)
    return unsigned.with_signature(key.sign(unsigned.signing_message()))


def bench_verify(count: int, repeat: int) -> None:
    """Verify with the compiled fast path (built into a scratch dir if needed) and pure Python."""
    from custody.audit import fastscan

    with tempfile.TemporaryDirectory(prefix="strongroom-audit-bench-") as tmp:
        directory = Path(tmp) / "export"
        started = time.perf_counter()
        write_synthetic_export(directory, count)
        print(f"synthetic export: {count:,} entries written in {time.perf_counter() - started:.1f} s")
        compiled = fastscan.load()
        if compiled is None:
            try:
                compiled = fastscan.load_from(fastscan.build(Path(tmp)))
            except (RuntimeError, OSError) as exc:
                print(f"verify: no compiled fast path ({exc}); pure Python only")
        keys = parse_keys(read_json(directory / "keys.json"))
        paths = [("compiled", compiled), ("pure", None)] if compiled is not None else [("pure", None)]
        for name, fast in paths:
            rates = []
            for _ in range(repeat):
                started, cpu_started = time.perf_counter(), time.process_time()
                report = verify_export(directory, keys, fast=fast)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                assert report.ok, report.render()
                rates.append(count / cpu)
                # CPU time as well as wall time: on a shared machine the wall clock counts other load too.
                print(f"verify ({name}): {count:,} entries, {report.summary['checkpoints']} checkpoints in "
                      f"{elapsed:.2f} s wall ({cpu:.2f} s CPU) = {count / elapsed:,.0f} entries/s wall, "
                      f"{count / cpu:,.0f} entries/s CPU")
            print(f"verify ({name}): median {statistics.median(rates):,.0f} entries/s CPU over {repeat} runs "
                  "(target >= 1,000,000)")


def bench_checkpoint(count: int) -> None:
    from custody.audit.service import AuditService
    from custody.db import make_engine, make_session_factory
    from custody.keystore import LocalKeystore
    from custody.ledger.posting import TransferRequest
    from custody.ledger.service import MAX_BATCH, Ledger
    from strongroom.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="strongroom-audit-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        engine = make_engine(url)
        ledger = Ledger(make_session_factory(engine))
        wallet = ledger.create_account("platform", "BTC", AccountKind.HOT_WALLET)
        users = [ledger.create_account(f"u{i}", "BTC", AccountKind.USER_AVAILABLE) for i in range(100)]
        started = time.perf_counter()
        for start in range(0, count, MAX_BATCH):
            ledger.submit([TransferRequest(id=f"t{i}", debit_account=wallet.id,
                                           credit_account=users[i % 100].id, amount=1 + i % 997)
                           for i in range(start, min(start + MAX_BATCH, count))])
        print(f"ledger: {count:,} transfers written in {time.perf_counter() - started:.1f} s (setup)")
        keystore = LocalKeystore(Path(tmp) / "ks.srks", "benchmark passphrase", scrypt_log2_n=10)
        audit = AuditService(ledger._sessions, ledger, keystore)
        audit.signing_key_version()
        started = time.perf_counter()
        checkpoint = audit.create_checkpoint()
        print(f"checkpoint: over {checkpoint.last_seq:,} entries in {time.perf_counter() - started:.2f} s "
              "(journal read, chain re-check, Merkle root, totals, signature)")
        _bench_service_proofs(audit, count)
        engine.dispose()


def _bench_service_proofs(audit: object, count: int) -> None:
    from custody.audit.service import AuditService

    assert isinstance(audit, AuditService)
    started = time.perf_counter()
    audit.inclusion_proof(1, count)
    print(f"proofs (service): first inclusion proof, building the cached tree of {count:,} leaves: "
          f"{time.perf_counter() - started:.2f} s")
    rng = random.Random(1)
    samples = []
    for _ in range(200):
        seq = rng.randrange(1, count + 1)
        started = time.perf_counter()
        audit.inclusion_proof(seq, count)
        samples.append(time.perf_counter() - started)
    print(f"proofs (service): inclusion proof median {statistics.median(samples) * 1e3:.2f} ms "
          "(incl. entry and checkpoint reads)")


def bench_tree_proofs(count: int) -> None:
    started = time.perf_counter()
    tree = MerkleTree(leaf_hash(i.to_bytes(8, "big")) for i in range(count))
    print(f"proofs (tree): building a tree of {count:,} leaves: {time.perf_counter() - started:.2f} s")
    rng = random.Random(2)
    for name, make in (("inclusion", lambda: tree.inclusion_proof(rng.randrange(count))),
                       ("consistency", lambda: tree.consistency_proof(rng.randrange(1, count + 1)))):
        started = time.perf_counter()
        for _ in range(10_000):
            make()
        print(f"proofs (tree): {name} proof {(time.perf_counter() - started) / 10_000 * 1e6:.1f} µs each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the verified export")
    parser.add_argument("--checkpoint-entries", type=int, default=100_000,
                        help="ledger entries for the checkpoint benchmark")
    parser.add_argument("--repeat", type=int, default=3, help="verification runs per path (median)")
    parser.add_argument("--only", choices=("verify", "checkpoint", "proofs"), default=None,
                        help="run one benchmark (a short run on a shared machine)")
    args = parser.parse_args()
    if args.only in (None, "verify"):
        bench_verify(args.entries, args.repeat)
    if args.only in (None, "checkpoint"):
        bench_checkpoint(args.checkpoint_entries)
    if args.only in (None, "proofs"):
        bench_tree_proofs(args.entries)


if __name__ == "__main__":
    main()
