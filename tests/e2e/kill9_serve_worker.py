"""Run `strongroom serve` (or any `strongroom` command) and SIGKILL it at a named step (kill -9
tests, tests/e2e/test_kill9_*.py).

    python kill9_serve_worker.py serve --port PORT
    python kill9_serve_worker.py bundle import SIGNED

Test-only. The server is the real one (``strongroom.cli.main``); this script only installs, before
it starts, an observer of the database transactions the process commits. Each transaction is
labelled by what it wrote (``withdrawal.created``, ``withdrawal.approved``, ``approval.recorded``,
``tx.queued``, ``tx.signed``, ``ledger.reserve``, ``ledger.post``, ``bundle.signed``, ...) and, when
``KILL9_POINT`` is set, the process kills itself with SIGKILL at that point:

- ``before:<label>[#n]``: inside the ``n``-th (default first) transaction carrying ``label``, just
  before its commit (the transaction dies with the process: nothing of it is durable);
- ``after:<label>[#n]``: right after that transaction committed, before anything else happens
  (the HTTP answer is never sent, the job's next call is never made);
- ``after:chain.broadcast[#n]``: right after the node accepted a raw transaction, before the
  executor records that it was sent.

``KILL9_TRACE`` names a file that gets one line per labelled commit (``labels`` joined by ``+``),
so a test can list the steps a flow goes through. ``KILL9_JOB_INTERVAL_S`` shortens the wallet
jobs' interval (default 5 s) so a test does not wait for them, ``KILL9_CLAIM_STALE_MS`` the time
after which a dead request's idempotency claim may be taken over (default 60 s). With neither variable set the
script is exactly ``strongroom serve``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, inspect  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from custody.access.models import ApprovalRow, IdempotencyRecord  # noqa: E402
from custody.bundles.models import ColdBundle  # noqa: E402
from custody.ledger.models import LedgerTransfer  # noqa: E402
from custody.wallets.models import ChainTransaction, ChainTransactionAttempt  # noqa: E402
from custody.withdrawals.models import WithdrawalRequest  # noqa: E402

_lock = threading.Lock()
_seen: dict[str, int] = {}
KEY = "kill9.labels"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _changed(obj: object, attribute: str) -> bool:
    history = inspect(obj).attrs[attribute].history
    return bool(history.added)


def _entry_label(transfer_id: str, kind: str) -> str:
    for suffix in (":hold", ":reserve", ":void"):
        if transfer_id.endswith(suffix):
            return "ledger" + suffix.replace(":", ".")
    return f"ledger.{kind.rsplit('.', 1)[-1].lower()}"


def labels_of(objects: Iterable[object], new: set[int]) -> set[str]:
    """Return the labels of the written ``objects`` (``new`` holds the ids of inserted ones)."""
    found: set[str] = set()
    for obj in objects:
        inserted = id(obj) in new
        if isinstance(obj, WithdrawalRequest):
            if inserted:
                found.add("withdrawal.created")
            elif _changed(obj, "state"):
                found.add(f"withdrawal.{obj.state}")
        elif isinstance(obj, ApprovalRow) and inserted:
            found.add("approval.recorded")
        elif isinstance(obj, ChainTransaction):
            if inserted:
                found.add("tx.queued")
            elif _changed(obj, "status"):
                found.add(f"tx.{obj.status}")
        elif isinstance(obj, ColdBundle):
            if inserted:
                found.add("bundle.exported")
            elif _changed(obj, "state"):
                found.add(f"bundle.{obj.state}")
        elif isinstance(obj, ChainTransactionAttempt) and inserted:
            found.add("tx.attempt")
        elif isinstance(obj, LedgerTransfer) and inserted:
            found.add(_entry_label(obj.id, str(obj.kind)))
        elif isinstance(obj, IdempotencyRecord):
            found.add("idempotency.stored")
    return found


def _pending(session: Session) -> set[str]:
    new = {id(o) for o in session.new}
    return labels_of([*session.new, *session.dirty], new)


def _parse(point: str) -> tuple[str, str, int]:
    when, _, rest = point.partition(":")
    label, _, nth = rest.partition("#")
    assert when in ("before", "after") and label, \
        f"KILL9_POINT was {point!r}, expected before|after:LABEL[#N]"
    return when, label, int(nth or 1)


def _hit(labels: set[str], label: str, nth: int) -> bool:
    """Count ``label``'s occurrence in this commit; True when it is the ``nth``."""
    if label not in labels:
        return False
    with _lock:
        _seen[label] = _seen.get(label, 0) + 1
        return _seen[label] == nth


def install(point: str | None, trace: Path | None) -> None:
    """Observe commits; trace them to ``trace`` and SIGKILL the process at ``point``."""
    when, label, nth = _parse(point) if point else ("", "", 0)

    @event.listens_for(Session, "after_flush")
    def _flushed(session: Session, context: Any) -> None:
        new = {id(o) for o in session.new}
        session.info.setdefault(KEY, set()).update(labels_of([*session.new, *session.dirty], new))

    @event.listens_for(Session, "before_commit")
    def _before(session: Session) -> None:
        labels = session.info.setdefault(KEY, set())
        labels.update(_pending(session))
        if when == "before" and labels and _hit(labels, label, nth):
            _die()

    @event.listens_for(Session, "after_commit")
    def _after(session: Session) -> None:
        labels = session.info.pop(KEY, set())
        if not labels:
            return
        if trace is not None:
            with _lock, trace.open("a") as out:
                out.write("+".join(sorted(labels)) + "\n")
        if when == "after" and _hit(labels, label, nth):
            _die()

    @event.listens_for(Session, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(KEY, None)

    _label_core_writes()
    if label == "chain.broadcast":
        _kill_after_broadcast(when, nth)


def _label_core_writes() -> None:
    """Label what the ORM's flush does not see: lifecycle transitions (an UPDATE statement) and
    ledger entries (inserted through the DBAPI cursor)."""
    from custody.ledger import bulk
    from custody.withdrawals import lifecycle

    transition = lifecycle.transition

    def labelled_transition(session: Session, kind: Any, subject_id: str, *args: Any, **kwargs: Any) -> Any:
        moved = transition(session, kind, subject_id, *args, **kwargs)
        session.info.setdefault(KEY, set()).add(f"{kind}.{moved.to_state}")
        return moved

    insert_entries = bulk.insert_entries

    def labelled_insert(session: Session, created: Any) -> Any:
        labels = {_entry_label(entry.id, str(entry.kind)) for entry, *_ in created}
        session.info.setdefault(KEY, set()).update(labels)
        return insert_entries(session, created)

    lifecycle.transition = labelled_transition  # type: ignore[assignment]
    bulk.insert_entries = labelled_insert  # type: ignore[assignment]


def _kill_after_broadcast(when: str, nth: int) -> None:
    from custody.chains.ethereum.adapter import EthereumAdapter

    original = EthereumAdapter.broadcast

    def broadcast(self: EthereumAdapter, raw: bytes) -> str:
        hit = _hit({"chain.broadcast"}, "chain.broadcast", nth)
        if hit and when == "before":
            _die()
        txid = original(self, raw)
        if hit:
            _die()
        return txid

    EthereumAdapter.broadcast = broadcast  # type: ignore[method-assign]


def main() -> None:
    trace = os.environ.get("KILL9_TRACE")
    install(os.environ.get("KILL9_POINT") or None, Path(trace) if trace else None)
    interval = os.environ.get("KILL9_JOB_INTERVAL_S")
    if interval:
        from strongroom import jobs

        jobs.WALLET_INTERVAL_S = float(interval)
        jobs.EXPIRE_INTERVAL_S = float(interval)
    stale = os.environ.get("KILL9_CLAIM_STALE_MS")
    if stale:
        # How long an unfinished idempotency claim blocks retries before one takes it over
        # (60 s in production: a killed request's claim is never completed).
        from custody.access import idempotency

        idempotency.CLAIM_STALE_MS = int(stale)
    from strongroom.cli import main as cli_main

    cli_main(sys.argv[1:], prog_name="strongroom")


if __name__ == "__main__":
    main()
