"""Offline verification of a ledger export (pure: reads files, never a database).

One streaming pass over entries.jsonl recomputes every chain hash, the RFC
6962 root at every checkpoint's tree size, per-asset totals, and replays
balances in sequence order. Account terms (owner, asset, kind, flags) come from
the hash-chained ``open`` entries, never from the unsigned accounts.jsonl,
and each account's flags must be the ones its kind requires. Then the
checkpoints' chain, ranges and signatures are checked against pinned keys, the
exported accounts against the journal, and the reserves snapshots against the
balances at their ledger sequence. Every problem becomes a :class:`Finding`
that names what failed and where.

Strict by default: exit 0 means every entry is covered by a checkpoint signed
by a pinned key. The named downgrades in :data:`DOWNGRADES` turn exactly one
of those requirements into a warning.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from custody.audit import snapshots as snapshot_checks
from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, AssetTotals, Checkpoint
from custody.audit.export import (
    ACCOUNTS_FILE,
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    EXPORT_VERSION,
    KEYS_FILE,
    MANIFEST_FILE,
    AccountRecord,
    Manifest,
    PublicKey,
    parse_keys,
)
from custody.audit.fastscan import load as load_fast_path
from custody.audit.merkle import EMPTY_ROOT, NODE_PREFIX
from custody.audit.state import AuditState
from custody.audit.untrusted import FormatError, line_batches, lines, loads, printable, read_json
from custody.ledger.entry import (
    ACCOUNT_OWNER_PATTERN,
    ACTOR_PATTERN,
    AMOUNT_LIMIT,
    DEFAULT_FLAGS,
    ENTRY_FORMAT_VERSION,
    ENTRY_HASH_DOMAIN,
    GENESIS_HASH,
    OPEN_ID_PREFIX,
    AccountKind,
    Entry,
    canonical_json,
)

# Put a limit on everything: a badly broken export reports its first problems, not millions.
MAX_FINDINGS = 100
MAX_LISTED_ACCOUNTS = 20
HASH_HEX_LEN = 64
ENTRY_LINE_MAX_BYTES = 16 * 1024
# 2^256 has 78 decimal digits: shorter amounts are below it without a big-int compare.
AMOUNT_DIGITS_MAX = 78
DEBITS_LIMITED = 1
CREDITS_LIMITED = 2
# The flags each account kind must carry (docs/ledger-format.md, "Account kinds and flags").
KIND_FLAGS: dict[str, int] = {kind.value: int(flags) for kind, flags in DEFAULT_FLAGS.items()}
MARGIN_KIND = AccountKind.USER_MARGIN.value
USER_KINDS = frozenset({AccountKind.USER_AVAILABLE.value, AccountKind.USER_HELD.value, MARGIN_KIND})
WALLET_KINDS = frozenset({AccountKind.HOT_WALLET.value, AccountKind.COLD_WALLET.value})

# The compiled fast path over entries.jsonl, if built from the current source (custody/audit/fastscan.py).
FAST = load_fast_path()

# Named downgrades (strongroom-audit verify --allow-...): each makes one requirement a warning.
ALLOW_UNSIGNED_TAIL = "unsigned-tail"
ALLOW_NO_CHECKPOINTS = "no-checkpoints"
ALLOW_UNPINNED_KEYS = "unpinned-keys"
DOWNGRADES = frozenset({ALLOW_UNSIGNED_TAIL, ALLOW_NO_CHECKPOINTS, ALLOW_UNPINNED_KEYS})


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed (or warned) check: a stable code, a message, and where."""

    code: str
    message: str
    seq: int | None = None
    checkpoint: int | None = None
    line: int | None = None
    account: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form (absent locations omitted)."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        for name in ("seq", "checkpoint", "line", "account"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body


@dataclass
class Report:
    """The verifier's verdict: ``ok`` only if there is no failure."""

    failures: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    suppressed: int = 0
    summary: dict[str, object] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    newest_checkpoint: Checkpoint | None = None
    snapshot_hashes: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Return True if every check passed."""
        return not self.failures and not self.suppressed

    def fail(self, code: str, message: str, **where: int | None) -> None:
        """Record a failure (at most MAX_FINDINGS are kept; the rest are counted)."""
        if len(self.failures) >= MAX_FINDINGS:
            self.suppressed += 1
            return
        self.failures.append(Finding(code, message, **where))

    def warn(self, code: str, message: str, **where: int | None) -> None:
        """Record a warning: worth an auditor's attention, not a failed check."""
        if len(self.warnings) < MAX_FINDINGS:
            self.warnings.append(Finding(code, message, **where))

    def require(self, allowed: bool, code: str, message: str, **where: int | None) -> None:
        """Record a failure, or a warning if the auditor explicitly allowed this downgrade."""
        if allowed:
            self.warn(code, message + " (allowed by a downgrade flag)", **where)
        else:
            self.fail(code, message, **where)

    def to_dict(self) -> dict[str, object]:
        """Return the machine-readable report (``strongroom-audit verify --json``)."""
        newest = self.newest_checkpoint
        return {
            "ok": self.ok, "summary": self.summary, "checks": self.checks,
            "newest_checkpoint": None if newest is None else {
                "number": newest.number, "last_seq": newest.last_seq, "hash": newest.hash()},
            "snapshots": {str(k): v for k, v in sorted(self.snapshot_hashes.items())},
            "failures": [f.to_dict() for f in self.failures],
            "failures_suppressed": self.suppressed,
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def render(self) -> str:
        """Return the human-readable report; every untrusted string in it is escaped."""
        s = self.summary
        lines_out = [f"strongroom-audit: ledger export v{s.get('format_version', '?')}: "
                     f"{s.get('entries', 0)} entries, {s.get('checkpoints', 0)} checkpoints, "
                     f"{s.get('accounts', 0)} accounts"]
        lines_out += [f"  ok    {check}" for check in self.checks]
        lines_out += [f"  FAIL  {f.message}" for f in self.failures]
        if self.suppressed:
            lines_out.append(f"  FAIL  ... and {self.suppressed} more failures not shown")
        lines_out += [f"  warn  {w.message}" for w in self.warnings]
        newest = self.newest_checkpoint
        if newest is not None:
            lines_out.append(f"newest checkpoint: #{newest.number} covers seq 1..{newest.last_seq}, "
                             f"hash {newest.hash()}")
        for number, digest in sorted(self.snapshot_hashes.items()):
            lines_out.append(f"reserves snapshot: #{number} hash {digest}")
        verdict = "VERIFIED" if self.ok else f"FAILED ({len(self.failures) + self.suppressed} problems)"
        lines_out.append(f"result: {verdict}")
        return "\n".join(printable(line) for line in lines_out)


class _EntryStruct(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The canonical transfer entry, fields in canonical (sorted) order for a cheap re-encode.

    The hot path decodes this; the rare ``open`` entry, whose account_* keys it
    refuses, is decoded as :class:`_OpenStruct`.
    """

    actor: str
    amount: str
    asset: str
    code: int
    credit_account: int
    debit_account: int
    expires_ms: int | None
    id: str
    kind: str
    pending_id: str | None
    reference: str
    seq: int
    timeout_s: int
    timestamp_ms: int
    v: int


class _OpenStruct(_EntryStruct):
    """The canonical ``open`` entry: a transfer entry's keys plus the account's terms."""

    account_flags: int
    account_kind: str
    account_owner: str


_decode_entry = msgspec.json.Decoder(_EntryStruct).decode
_decode_open = msgspec.json.Decoder(_OpenStruct).decode
_encode = msgspec.json.Encoder().encode


def _parse_entry(raw: bytes) -> _EntryStruct | _OpenStruct:
    """Parse canonical entry bytes; raise ValueError if they are not exactly canonical."""
    parsed: _EntryStruct | _OpenStruct
    try:
        parsed = _decode_entry(raw)
    except msgspec.ValidationError:
        # Keys are sorted, so account_* keys come first: b'{"acc' (a transfer starts b'{"act').
        if raw[4:5] != b"c":
            raise
        parsed = _decode_open(raw)
    if _encode(parsed) != raw or not raw.isascii():
        # msgspec writes non-ASCII as UTF-8 where canonical form escapes it, and keeps the last
        # of duplicate keys: the reference parser accepts only the one canonical byte string.
        Entry.from_bytes(raw)
    amount = parsed.amount
    if parsed.v != ENTRY_FORMAT_VERSION:
        raise ValueError(f"entry version was {parsed.v}, this verifier reads {ENTRY_FORMAT_VERSION}")
    if parsed.kind == "open" or type(parsed) is _OpenStruct:
        _check_open_shape(parsed)
    elif not amount.isdigit() or amount.startswith("0") or (
            len(amount) >= AMOUNT_DIGITS_MAX and int(amount) >= AMOUNT_LIMIT):
        raise ValueError(f"entry amount {amount[:90]!r} must be a decimal string, 0 < amount < 2^256")
    actor = parsed.actor
    if actor not in _valid_actors:
        if not ACTOR_PATTERN.fullmatch(actor):  # match would pass a trailing newline
            raise ValueError(f"entry actor {actor[:140]!r} is not user:<id> or service:<name>")
        if len(_valid_actors) < VALID_ACTORS_CACHED:
            _valid_actors.add(actor)
    return parsed


# Actors repeat (a few services, the users): remember the valid ones, up to a bound.
VALID_ACTORS_CACHED = 65_536
_valid_actors: set[str] = set()


def _check_open_shape(parsed: _EntryStruct | _OpenStruct) -> None:
    if parsed.kind != "open":
        raise ValueError(f"a {parsed.kind[:20]!r} entry must not carry account terms")
    if not isinstance(parsed, _OpenStruct):
        raise ValueError("an open entry must carry account_owner, account_kind and account_flags")
    if parsed.amount != "0":
        raise ValueError(f"an open entry's amount was {parsed.amount[:90]!r}, must be \"0\"")


@dataclass
class _Scan:
    """What the pass over entries.jsonl found."""

    count: int = 0
    last_seq: int = 0
    head_hash: str = GENESIS_HASH
    late: list[tuple[int, int, int]] = field(default_factory=list)  # (line, seq, max seq before)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)  # (line, first missing, last)
    roots_checked: int = 0


@dataclass
class _Replay:
    """Balances replayed from entries: per account ``[asset, flags, dpend, dpost, cpend, cpost]``.

    ``terms`` holds what each account's ``open`` entry says: (owner, kind, opening seq).
    """

    accounts: dict[int, list[Any]] = field(default_factory=dict)
    terms: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    opened_ms: dict[int, int] = field(default_factory=dict)
    pendings: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    totals: dict[str, list[int]] = field(default_factory=dict)
    negative_reported: set[int] = field(default_factory=set)
    # Posted balances of user and wallet accounts at each reserves snapshot's ledger_seq.
    captured: dict[int, dict[int, int]] = field(default_factory=dict)


def verify_export(
    directory: Path,
    pinned_keys: Mapping[tuple[str, int], PublicKey] | None = None,
    trusted_checkpoints: Sequence[str] = (),
    *,
    allow: frozenset[str] = frozenset(),
    state: AuditState | None = None,
    fast: ModuleType | str | None = "built",
) -> Report:
    """Verify an export directory; raise :class:`FormatError` if it is unusable.

    Without ``pinned_keys`` the export's own keys.json is used, which fails unless
    ``allow`` holds :data:`ALLOW_UNPINNED_KEYS`. With ``state`` (the previous
    audit's newest checkpoint) the export must extend that checkpoint. ``fast``
    is the compiled fast path: ``"built"`` (default) uses :data:`FAST`, the built
    extension if any; None forces pure Python. Both give the same report.
    """
    compiled = FAST if fast == "built" else fast
    assert compiled is None or isinstance(compiled, ModuleType), "fast must be a module, None or 'built'"
    unknown = set(allow) - DOWNGRADES
    assert not unknown, f"unknown downgrades {sorted(unknown)}"
    report = Report()
    manifest = Manifest.from_dict(read_json(directory / MANIFEST_FILE))
    export_keys = parse_keys(read_json(directory / KEYS_FILE))
    accounts = _load_accounts(directory / ACCOUNTS_FILE)
    checkpoints = _load_checkpoints(directory / CHECKPOINTS_FILE, report)
    snapshots = snapshot_checks.load_snapshots(directory, report)
    report.summary.update(format_version=EXPORT_VERSION, accounts=len(accounts),
                          checkpoints=len(checkpoints), snapshots=len(snapshots))
    keys = _choose_keys(export_keys, pinned_keys, ALLOW_UNPINNED_KEYS in allow, report)
    replay = _Replay()
    by_size = {c.tree_size: c for c in checkpoints}
    capture_at = {s.ledger_seq for s in snapshots}
    scan = _scan_entries(directory / ENTRIES_FILE, by_size, capture_at, replay, report, compiled)
    report.summary.update(entries=scan.count, head_seq=scan.last_seq, head_hash=scan.head_hash)
    _report_sequence(scan, report)
    _check_checkpoint_chain(checkpoints, keys, scan, allow, report)
    _check_trusted(checkpoints, trusted_checkpoints, report)
    _check_state(checkpoints, state, report)
    _check_accounts(accounts, replay, report)
    _report_unconstrained(replay, report)
    terms = {i: (*t, replay.accounts[i][0]) for i, t in replay.terms.items()}
    snapshot_checks.verify_snapshots(directory, snapshots, checkpoints, keys, terms,
                                     replay.captured, state, report)
    _check_manifest(manifest, scan, len(checkpoints), len(accounts), report)
    return report


def _choose_keys(
    export_keys: Mapping[tuple[str, int], PublicKey],
    pinned: Mapping[tuple[str, int], PublicKey] | None,
    allow_unpinned: bool,
    report: Report,
) -> Mapping[tuple[str, int], PublicKey]:
    if pinned is None:
        report.require(allow_unpinned, "keys_not_pinned",
                       "no pinned keys: pass --keys with the public keys obtained in the key "
                       "ceremony (the export's own keys.json proves nothing about the operator)")
        return export_keys
    for ident, key in sorted(export_keys.items()):
        known = pinned.get(ident)
        if known is None:
            # A key the auditor never pinned: a rotation that skipped the key ceremony, or a lie.
            report.fail("key_mismatch", f"keys.json: key {ident[0][:80]} v{ident[1]} is not among "
                        "the pinned keys (pin new key versions in a key ceremony)")
        elif known.public_key != key.public_key:
            report.fail("key_mismatch", f"keys.json: key {ident[0][:80]} v{ident[1]} differs from the "
                        "pinned key of that name and version")
    return pinned


def _load_accounts(path: Path) -> dict[int, AccountRecord]:
    accounts: dict[int, AccountRecord] = {}
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        raise FormatError(f"cannot read {ACCOUNTS_FILE}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(lines(handle, ACCOUNTS_FILE), start=1):
            where = f"{ACCOUNTS_FILE} line {number}"
            data = loads(line, where)
            record = AccountRecord.from_dict(data)
            if canonical_json(data) != line:
                raise FormatError(f"{where}: not canonical JSON (sorted keys, no whitespace, ASCII)")
            if record.id in accounts:
                raise FormatError(f"{where}: account {record.id} appears twice")
            accounts[record.id] = record
    return accounts


def _load_checkpoints(path: Path, report: Report) -> list[Checkpoint]:
    checkpoints: list[Checkpoint] = []
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        raise FormatError(f"cannot read {CHECKPOINTS_FILE}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(lines(handle, CHECKPOINTS_FILE), start=1):
            try:
                loads(raw, f"{CHECKPOINTS_FILE} line {number}")
                checkpoints.append(Checkpoint.from_bytes(raw))
            except ValueError as exc:
                report.fail("checkpoint_malformed", f"{CHECKPOINTS_FILE} line {number}: {exc}",
                            line=number)
    return checkpoints


def _scan_entries(
    path: Path, by_size: Mapping[int, Checkpoint], capture_at: set[int], replay: _Replay,
    report: Report, fast: ModuleType | None = None,
) -> _Scan:
    """Stream the entries once: chain, Merkle frontier, checkpoint roots, replay.

    With ``fast`` (the compiled :mod:`custody.audit.fastscan` module) the common
    lines go through C and every line it leaves is checked here, one at a time.
    """
    scan = _Scan()
    stops = set(by_size) | capture_at
    cursor = _Cursor()
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FormatError(f"cannot read {ENTRIES_FILE}: {exc.strerror}") from None
    with handle:
        batches = line_batches(handle, ENTRIES_FILE, ENTRY_LINE_MAX_BYTES)
        if fast is None:
            for batch in batches:
                _scan_lines(batch, cursor, scan, by_size, capture_at, stops, replay, report)
        else:
            # The ids live in C; the pure verifier uses the same set (add, in) for the lines it takes.
            replay.ids = fast.IdSet()
            scanner = fast.Scanner(replay.accounts, replay.ids, replay.totals, replay.pendings, stops)
            for batch in batches:
                index, size = 0, len(batch)
                while index < size:
                    index = scanner.scan(batch, index)
                    if index < size:
                        # A line the compiled path leaves: the pure path checks (and reports) it.
                        cursor.prev, cursor.stack, cursor.count, cursor.max_seq = scanner.get_state()
                        # scan() wrote its balances and totals back into ``replay`` before it stopped.
                        _scan_lines(batch[index:index + 1], cursor, scan, by_size, capture_at, stops,
                                    replay, report)
                        scanner.set_state(cursor.prev, cursor.stack, cursor.count, cursor.max_seq)
                        index += 1
            scanner.flush()  # the balances and totals of the lines since the last hand-over
            cursor.prev, cursor.stack, cursor.count, cursor.max_seq = scanner.get_state()
    scan.count, scan.last_seq, scan.head_hash = cursor.count, cursor.max_seq, cursor.prev.hex()
    return scan


@dataclass
class _Cursor:
    """Where the pass over the entries stands: chain hash, Merkle frontier, lines, highest seq."""

    prev: bytes = bytes(32)
    stack: list[bytes] = field(default_factory=list)
    count: int = 0
    max_seq: int = 0


def _scan_lines(
    batch: list[bytes], cursor: _Cursor, scan: _Scan, by_size: Mapping[int, Checkpoint],
    capture_at: set[int], stops: set[int], replay: _Replay, report: Report,
) -> None:
    """Check and replay lines (the pure hot loop, and the reference for the compiled path)."""
    sha256, tohex, domain, node = hashlib.sha256, binascii.hexlify, ENTRY_HASH_DOMAIN, NODE_PREFIX
    accounts, ids, totals = replay.accounts, replay.ids, replay.totals
    prev, stack, count, max_seq = cursor.prev, cursor.stack, cursor.count, cursor.max_seq
    digest = prev
    for line in batch:
        count += 1
        raw = line[65:]
        digest = sha256(domain + prev + raw).digest()
        # Compare the text: only the canonical lowercase hex of the recomputed hash passes.
        if line[:64] != tohex(digest) or line[64:65] != b" ":
            prev = _chain_mismatch(count, line, digest, report)
        else:
            prev = digest
        stack.append(sha256(b"\x00" + raw).digest())
        size = count
        while not size & 1:
            right = stack.pop()
            stack[-1] = sha256(node + stack[-1] + right).digest()
            size >>= 1
        try:
            entry = _parse_entry(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            report.fail("entry_malformed", f"entries.jsonl line {count}: not a canonical entry "
                        f"({printable(str(exc))[:300]})", line=count)
            entry = None
        if entry is not None:
            seq = entry.seq
            if seq != max_seq + 1:
                _sequence_anomaly(scan, count, seq, max_seq)
            if seq > max_seq:
                max_seq = seq
            # Fast path for the commonest entry, a valid single transfer; all else goes to _apply.
            debit, credit = accounts.get(entry.debit_account), accounts.get(entry.credit_account)
            asset, tid = entry.asset, entry.id
            if (entry.kind == "single" and debit is not None and credit is not None
                    and debit is not credit and debit[0] == asset and credit[0] == asset
                    and tid not in ids and not tid.startswith(OPEN_ID_PREFIX)):
                amount = int(entry.amount)
                ids.add(tid)
                debit[3] += amount
                credit[5] += amount
                row = totals.get(asset) or totals.setdefault(asset, [0, 0, 0])
                row[0] += 1
                row[1] += amount
                if (debit[1] & DEBITS_LIMITED and debit[2] + debit[3] > debit[5]) or (
                        credit[1] & CREDITS_LIMITED and credit[4] + credit[5] > credit[3]):
                    _report_negatives(entry, replay, report)
            else:
                _apply(entry, replay, report)
        if count in stops:
            if count in by_size:
                _check_root(by_size[count], stack, digest, replay, report)
                scan.roots_checked += 1
            if count in capture_at:
                replay.captured[count] = _posted_balances(replay)
    cursor.prev, cursor.count, cursor.max_seq = prev, count, max_seq


def _posted_balances(replay: _Replay) -> dict[int, int]:
    """Return the posted balance of every user (credit) and wallet (debit) account right now."""
    balances: dict[int, int] = {}
    for account_id, (_, kind, _) in replay.terms.items():
        state = replay.accounts[account_id]
        if kind in USER_KINDS:
            balances[account_id] = state[5] - state[3]
        elif kind in WALLET_KINDS:
            balances[account_id] = state[3] - state[5]
    return balances


def _chain_mismatch(line_number: int, line: bytes, digest: bytes, report: Report) -> bytes:
    """Report a stored hash that is not the recomputed one; continue the chain from the stored hash."""
    seq = _seq_of(line)
    where = f"entry seq {seq}" if seq is not None else f"entries.jsonl line {line_number}"
    report.fail("chain_hash_mismatch", f"{where}: chain hash mismatch (stored "
                f"{line[:16].decode('ascii', 'replace')}..., recomputed {digest.hex()[:16]}...)",
                seq=seq, line=line_number)
    try:
        return binascii.unhexlify(line[:64])
    except (binascii.Error, ValueError):
        return digest


def _seq_of(line: bytes) -> int | None:
    try:
        return _decode_entry(line[65:]).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _sequence_anomaly(scan: _Scan, line: int, seq: int, max_seq: int) -> None:
    if len(scan.late) + len(scan.gaps) >= MAX_FINDINGS:
        return
    if seq > max_seq + 1:
        scan.gaps.append((line, max_seq + 1, seq - 1))
    else:
        scan.late.append((line, seq, max_seq))


def _apply(e: _EntryStruct | _OpenStruct, replay: _Replay, report: Report) -> None:
    """Replay one entry's effect on balances and totals, checking what the ledger guarantees."""
    if isinstance(e, _OpenStruct):
        _open(e, replay, report)
        return
    amount, kind = int(e.amount), e.kind
    debit, credit = replay.accounts.get(e.debit_account), replay.accounts.get(e.credit_account)
    if (debit is None or credit is None or debit is credit or debit[0] != e.asset
            or credit[0] != e.asset or amount <= 0 or e.id in replay.ids
            or e.id.startswith(OPEN_ID_PREFIX)):
        _bad_entry(e, replay, report)
        return
    replay.ids.add(e.id)
    totals = replay.totals.get(e.asset)
    if totals is None:
        totals = replay.totals[e.asset] = [0, 0, 0]
    totals[0] += 1
    if kind == "single":
        debit[3] += amount
        credit[5] += amount
        totals[1] += amount
    elif kind == "pending":
        replay.pendings[e.id] = (e.debit_account, e.credit_account, amount)
        debit[2] += amount
        credit[4] += amount
        totals[2] += amount
    elif not _resolve(e, amount, debit, credit, totals, replay, report):
        return
    _report_negatives(e, replay, report)


def _open(e: _OpenStruct, replay: _Replay, report: Report) -> None:
    """Open an account with the terms its hash-chained entry records, checking them."""
    account_id = e.debit_account
    problem = None
    if e.credit_account != account_id or e.id != f"{OPEN_ID_PREFIX}{account_id}":
        problem = f"an open entry must name one account twice and have id open:<account>, was {e.id!r}"
    elif account_id in replay.accounts or e.id in replay.ids:
        problem = f"account {account_id} is opened a second time"
    elif (e.pending_id, e.timeout_s, e.expires_ms, e.code, e.reference) != (None, 0, None, 0, ""):
        problem = "an open entry must have no pending_id, timeout, expiry, code or reference"
    elif e.account_kind not in KIND_FLAGS:
        problem = f"account {account_id} has unknown kind {e.account_kind[:40]!r}"
    elif not ACCOUNT_OWNER_PATTERN.fullmatch(e.account_owner):
        problem = f"account {account_id} owner {e.account_owner[:140]!r} is not a valid owner"
    if problem is not None:
        report.fail("account_open_invalid", f"entry seq {e.seq}: {problem}", seq=e.seq,
                    account=account_id)
        return
    required = KIND_FLAGS[e.account_kind]
    if e.account_flags != required:
        report.fail("account_flags_invalid", f"entry seq {e.seq}: account {account_id} "
                    f"({e.account_owner}, {e.account_kind}) was opened with flags {e.account_flags}; "
                    f"its kind requires flags {required}", seq=e.seq, account=account_id)
    # Replay with the constraint the kind requires, whatever the entry claims.
    replay.accounts[account_id] = [e.asset, required, 0, 0, 0, 0]
    replay.terms[account_id] = (e.account_owner, e.account_kind, e.seq)
    replay.opened_ms[account_id] = e.timestamp_ms
    replay.ids.add(e.id)
    totals = replay.totals.get(e.asset)
    if totals is None:
        totals = replay.totals[e.asset] = [0, 0, 0]
    totals[0] += 1


def _report_negatives(e: _EntryStruct | _OpenStruct, replay: _Replay, report: Report) -> None:
    """Report each account of ``e`` that now breaks its constraint (once per account)."""
    debit, credit = replay.accounts[e.debit_account], replay.accounts[e.credit_account]
    if debit[1] & DEBITS_LIMITED and debit[2] + debit[3] > debit[5]:
        _negative(e.debit_account, debit, e.seq, replay, report)
    if credit[1] & CREDITS_LIMITED and credit[4] + credit[5] > credit[3]:
        _negative(e.credit_account, credit, e.seq, replay, report)


def _resolve(
    e: _EntryStruct, amount: int, debit: list[Any], credit: list[Any], totals: list[int],
    replay: _Replay, report: Report,
) -> bool:
    held = replay.pendings.pop(e.pending_id or "", None)
    if e.kind not in ("post", "void", "expire"):
        report.fail("entry_invalid", f"entry seq {e.seq}: unknown kind {e.kind[:20]!r}", seq=e.seq)
        return False
    if held is None or held[:2] != (e.debit_account, e.credit_account):
        report.fail("pending_invalid", f"entry seq {e.seq}: {e.kind} of {str(e.pending_id)[:130]!r}, "
                    "which is not an outstanding pending transfer between the same accounts", seq=e.seq)
        return False
    posted = amount if e.kind == "post" else 0
    if (e.kind == "post" and amount > held[2]) or (e.kind != "post" and amount != held[2]):
        report.fail("pending_invalid", f"entry seq {e.seq}: {e.kind} amount {amount} does not fit "
                    f"the pending amount {held[2]}", seq=e.seq)
    debit[2] -= held[2]
    credit[4] -= held[2]
    debit[3] += posted
    credit[5] += posted
    totals[1] += posted
    totals[2] -= held[2]
    return True


def _bad_entry(e: _EntryStruct, replay: _Replay, report: Report) -> None:
    if e.id in replay.ids or e.id.startswith(OPEN_ID_PREFIX):
        reason = f"transfer id {e.id[:130]!r} was already used or is reserved"
    elif e.debit_account not in replay.accounts or e.credit_account not in replay.accounts:
        reason = (f"account {e.debit_account} or {e.credit_account} has not been opened by an "
                  "earlier open entry")
    elif e.debit_account == e.credit_account:
        reason = f"debit and credit account are both {e.debit_account}"
    elif int(e.amount) <= 0:
        reason = f"amount was {e.amount}, must be positive"
    else:
        reason = f"asset {e.asset[:20]!r} does not match the accounts' assets"
    report.fail("entry_invalid", f"entry seq {e.seq}: {reason}", seq=e.seq)


def _negative(account_id: int, state: list[Any], seq: int, replay: _Replay, report: Report) -> None:
    if account_id in replay.negative_reported:
        return
    replay.negative_reported.add(account_id)
    owner, kind, _ = replay.terms.get(account_id, ("?", "?", 0))
    report.fail("balance_negative", f"entry seq {seq}: account {account_id} ({owner}, {kind}, "
                f"{state[0]}) breaks its constraint (flags {state[1]}): debits pending {state[2]} + "
                f"posted {state[3]}, credits pending {state[4]} + posted {state[5]}",
                seq=seq, account=account_id)


def _check_root(
    checkpoint: Checkpoint, stack: list[bytes], head: bytes, replay: _Replay, report: Report
) -> None:
    root = stack[-1] if stack else EMPTY_ROOT
    for left in reversed(stack[:-1]):
        root = hashlib.sha256(NODE_PREFIX + left + root).digest()
    where = {"checkpoint": checkpoint.number}
    if root.hex() != checkpoint.root:
        report.fail("checkpoint_root_mismatch", f"checkpoint {checkpoint.number}: Merkle root over "
                    f"entries 1..{checkpoint.last_seq} is {root.hex()[:16]}..., the checkpoint says "
                    f"{checkpoint.root[:16]}...", **where)
    if head.hex() != checkpoint.head_hash:
        report.fail("checkpoint_head_mismatch", f"checkpoint {checkpoint.number}: chain hash of entry "
                    f"{checkpoint.last_seq} is {head.hex()[:16]}..., the checkpoint says "
                    f"{checkpoint.head_hash[:16]}...", **where)
    replayed = {asset: AssetTotals(*row) for asset, row in replay.totals.items()}
    for asset in sorted(set(replayed) | set(checkpoint.totals)):
        claimed, actual = checkpoint.totals.get(asset), replayed.get(asset)
        if claimed != actual:
            report.fail("checkpoint_totals_mismatch", f"checkpoint {checkpoint.number}: {asset[:20]} "
                        f"totals are {_totals_text(claimed)} in the checkpoint but "
                        f"{_totals_text(actual)} replayed from the entries", **where)


def _totals_text(totals: AssetTotals | None) -> str:
    if totals is None:
        return "absent"
    return f"entries {totals.entries}, posted {totals.posted}, pending {totals.pending}"


def _report_sequence(scan: _Scan, report: Report) -> None:
    late_seqs = {seq for _, seq, _ in scan.late}
    for line, first, last in scan.gaps:
        missing = [s for s in range(first, min(last, first + MAX_FINDINGS) + 1) if s not in late_seqs]
        if missing:
            span = f"seq {missing[0]}" if len(missing) == 1 else f"seq {missing[0]}..{missing[-1]}"
            report.fail("seq_gap", f"gap: {span} missing before entries.jsonl line {line}",
                        seq=missing[0], line=line)
    gap_seqs = {s for _, first, last in scan.gaps for s in range(first, min(last, first + MAX_FINDINGS) + 1)}
    for line, seq, max_before in scan.late:
        if seq in gap_seqs:
            report.fail("seq_reorder", f"reorder: seq {seq} appears at entries.jsonl line {line}, after "
                        f"seq {max_before}", seq=seq, line=line)
        else:
            report.fail("seq_duplicate", f"duplicate: seq {seq} appears again at entries.jsonl line "
                        f"{line}", seq=seq, line=line)
    if not scan.gaps and not scan.late:
        report.checks.append(f"sequence: entries 1..{scan.last_seq} in order, no gaps")


def _check_checkpoint_chain(
    checkpoints: Sequence[Checkpoint], keys: Mapping[tuple[str, int], PublicKey], scan: _Scan,
    allow: frozenset[str], report: Report,
) -> None:
    prev_hash, prev_last, bad = FIRST_PREV_CHECKPOINT, 0, len(report.failures)
    for index, checkpoint in enumerate(checkpoints, start=1):
        where = {"checkpoint": checkpoint.number}
        if checkpoint.number != index:
            report.fail("checkpoint_chain_broken", f"checkpoint {checkpoint.number} is number {index} "
                        "in checkpoints.jsonl: checkpoints are missing or out of order", **where)
        if checkpoint.prev_checkpoint != prev_hash:
            report.fail("checkpoint_chain_broken", f"checkpoint {checkpoint.number}: previous-checkpoint "
                        f"hash {checkpoint.prev_checkpoint[:16]}... does not match the checkpoint before "
                        f"it ({prev_hash[:16]}...)", **where)
        if checkpoint.first_seq != prev_last + 1:
            report.fail("checkpoint_range_invalid", f"checkpoint {checkpoint.number}: covers seq "
                        f"{checkpoint.first_seq}..{checkpoint.last_seq}, must start at {prev_last + 1}",
                        **where)
        if checkpoint.last_seq > scan.count:
            report.fail("checkpoint_beyond_export", f"checkpoint {checkpoint.number} covers seq "
                        f"{checkpoint.first_seq}..{checkpoint.last_seq} but the export ends at seq "
                        f"{scan.count}: entries were truncated", **where)
        _check_signature(checkpoint, keys, report)
        prev_hash, prev_last = checkpoint.hash(), checkpoint.last_seq
    if checkpoints:
        report.newest_checkpoint = checkpoints[-1]
        if len(report.failures) == bad:
            names = sorted({f"{c.key_name} v{c.key_version}" for c in checkpoints})
            report.checks.append(f"checkpoints: {len(checkpoints)} chained and signed "
                                 f"({', '.join(names)}), roots and totals match at every tree size")
    elif scan.count:
        report.require(ALLOW_NO_CHECKPOINTS in allow, "no_checkpoints",
                       f"the export has {scan.count} entries and no signed checkpoint")
    if scan.count > prev_last and (checkpoints or ALLOW_NO_CHECKPOINTS not in allow):
        report.require(ALLOW_UNSIGNED_TAIL in allow, "tail_unsigned",
                       f"entries {prev_last + 1}..{scan.count} are not covered by a signed "
                       "checkpoint (chain hashes verified only)", seq=prev_last + 1)


def _check_signature(
    checkpoint: Checkpoint, keys: Mapping[tuple[str, int], PublicKey], report: Report
) -> None:
    where = {"checkpoint": checkpoint.number}
    key = keys.get((checkpoint.key_name, checkpoint.key_version))
    if key is None:
        report.fail("checkpoint_unknown_key", f"checkpoint {checkpoint.number}: signed by unknown key "
                    f"{checkpoint.key_name[:80]!r} v{checkpoint.key_version} (not among the pinned "
                    "keys)", **where)
    elif not checkpoint.verify_signature(key.public_key):
        report.fail("checkpoint_signature_invalid", f"checkpoint {checkpoint.number}: signature does "
                    f"not verify with key {checkpoint.key_name} v{checkpoint.key_version}", **where)


def _check_trusted(checkpoints: Sequence[Checkpoint], trusted: Sequence[str], report: Report) -> None:
    present = {c.hash() for c in checkpoints}
    for expected in trusted:
        if expected.lower() not in present:
            report.fail("trusted_checkpoint_missing", f"trusted checkpoint {expected[:16]}... is not in "
                        "the export: it was truncated or rewritten")


def _check_state(checkpoints: Sequence[Checkpoint], state: AuditState | None, report: Report) -> None:
    """Require the export to extend the checkpoint the previous audit verified (CT-style)."""
    if state is None:
        return
    where = {"checkpoint": state.number}
    remembered = f"checkpoint #{state.number} (seq 1..{state.last_seq}, hash {state.checkpoint_hash})"
    found = next((c for c in checkpoints if c.number == state.number), None)
    if found is None:
        newest = checkpoints[-1].number if checkpoints else 0
        report.fail("state_rollback", f"the previously verified {remembered} is not in this export, "
                    f"whose checkpoints end at #{newest}: the ledger was truncated or rolled back",
                    **where)
    elif found.hash() != state.checkpoint_hash or found.last_seq != state.last_seq:
        report.fail("state_fork", f"this export's checkpoint #{state.number} has hash {found.hash()}, "
                    f"but the previously verified {remembered}: the ledger history was rewritten "
                    "(a fork)", **where)
    else:
        report.checks.append(f"state: extends the previously verified checkpoint #{state.number} "
                             f"(seq 1..{state.last_seq})")


def _check_accounts(accounts: Mapping[int, AccountRecord], replay: _Replay, report: Report) -> None:
    """Hold accounts.jsonl to the journal: the same accounts, terms and replayed balances."""
    bad = len(report.failures)
    posted: dict[str, int] = {}
    pending: dict[str, int] = {}
    for account_id, state in sorted(replay.accounts.items()):
        owner, kind, _ = replay.terms[account_id]
        record = accounts.get(account_id)
        if record is None:
            report.fail("account_missing", f"account {account_id} ({owner}, {kind}) is opened in the "
                        "journal but missing from accounts.jsonl", account=account_id)
        elif (record.owner, record.asset, record.kind, record.flags, record.created_ms) != (
                owner, state[0], kind, state[1], replay.opened_ms[account_id]):
            report.fail("account_terms_mismatch", f"account {account_id}: accounts.jsonl says owner "
                        f"{record.owner[:140]!r}, asset {record.asset[:20]!r}, kind "
                        f"{record.kind[:40]!r}, flags {record.flags}, created {record.created_ms}; its "
                        f"open entry says {owner!r}, {state[0]!r}, {kind!r}, flags {state[1]}, "
                        f"created {replay.opened_ms[account_id]}", account=account_id)
        claimed = None if record is None else [
            record.debits_pending, record.debits_posted, record.credits_pending, record.credits_posted]
        if claimed is not None and claimed != state[2:]:
            report.fail("balance_mismatch", f"account {account_id}: exported balances {claimed} "
                        f"differ from the replayed {state[2:]}", account=account_id)
        posted[state[0]] = posted.get(state[0], 0) + state[5] - state[3]
        pending[state[0]] = pending.get(state[0], 0) + state[4] - state[2]
    for account_id in sorted(set(accounts) - set(replay.accounts))[:MAX_FINDINGS]:
        report.fail("account_unknown", f"account {account_id} in accounts.jsonl was never opened in "
                    "the journal", account=account_id)
    for asset in sorted(posted):
        if posted[asset] or pending[asset]:
            report.fail("asset_sum_nonzero", f"{asset[:20]}: replayed balances sum to {posted[asset]} "
                        f"posted, {pending[asset]} pending; double entry requires 0")
    if len(report.failures) == bad:
        report.checks.append(f"accounts: all {len(replay.accounts)} accounts opened in the journal with "
                             "the flags their kind requires; accounts.jsonl matches their terms and "
                             f"replayed balances; per-asset sums are zero "
                             f"({', '.join(sorted(posted)) or 'no assets'})")
    if not replay.negative_reported:
        report.checks.append("constraints: no constrained account went negative at any point")


def _report_unconstrained(replay: _Replay, report: Report) -> None:
    """Say explicitly which accounts may go negative by design, and which are negative now."""
    margin = [i for i, (_, kind, _) in replay.terms.items() if kind == MARGIN_KIND]
    negative = []
    for account_id in margin:
        state = replay.accounts[account_id]
        balance = state[5] - state[3]
        if balance < 0:
            negative.append({"account": account_id, "owner": replay.terms[account_id][0],
                             "asset": state[0], "balance": str(balance)})
    report.summary["margin_accounts"] = len(margin)
    report.summary["negative_margin_accounts"] = negative[:MAX_LISTED_ACCOUNTS]
    if not margin:
        return
    listed = ", ".join(f"account {n['account']} ({n['owner']}) {n['balance']} {n['asset']}"
                       for n in negative[:MAX_LISTED_ACCOUNTS])
    more = "" if len(negative) <= MAX_LISTED_ACCOUNTS else f" and {len(negative) - MAX_LISTED_ACCOUNTS} more"
    report.checks.append(
        f"margin: {len(margin)} user_margin accounts carry no ledger constraint by design (exchange "
        f"cross margin, enforced by the clearing house); {len(negative)} negative at the head"
        + (f": {listed}{more}" if negative else ""))


def _check_manifest(
    manifest: Manifest, scan: _Scan, checkpoints: int, accounts: int, report: Report
) -> None:
    if (manifest.head_seq, manifest.head_hash) != (scan.last_seq, scan.head_hash):
        report.fail("manifest_mismatch", f"manifest head is seq {manifest.head_seq} "
                    f"{manifest.head_hash[:16]}..., the entries end at seq {scan.last_seq} "
                    f"{scan.head_hash[:16]}...")
    if (manifest.entries, manifest.checkpoints, manifest.accounts) != (scan.count, checkpoints, accounts):
        report.fail("manifest_mismatch", f"manifest counts {manifest.entries} entries, "
                    f"{manifest.checkpoints} checkpoints, {manifest.accounts} accounts; the files hold "
                    f"{scan.count}, {checkpoints}, {accounts}")
    if not any(f.code == "chain_hash_mismatch" for f in report.failures):
        report.checks.append(f"hash chain: {scan.count} entries chain to head {scan.head_hash[:16]}...")
