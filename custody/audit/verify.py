"""Offline verification of a ledger export (pure: reads files, never a database).

One pass over entries.jsonl recomputes every chain hash, the RFC 6962 root at
every checkpoint's tree size, per-asset totals, and replays balances in
sequence order with the exported accounts' constraint flags. Then the
checkpoints' chain, ranges and signatures are checked against pinned keys,
and the exported balances against the replayed ones. Every problem becomes a
:class:`Finding` that names what failed and where.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, AssetTotals, Checkpoint
from custody.audit.export import (
    ACCOUNTS_FILE,
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    KEYS_FILE,
    MANIFEST_FILE,
    AccountRecord,
    FormatError,
    Manifest,
    PublicKey,
    parse_keys,
    read_json,
)
from custody.audit.merkle import EMPTY_ROOT, NODE_PREFIX
from custody.ledger.entry import (
    ACTOR_PATTERN,
    AMOUNT_LIMIT,
    ENTRY_FORMAT_VERSION,
    ENTRY_HASH_DOMAIN,
    GENESIS_HASH,
    Entry,
)

# Put a limit on everything: a badly broken export reports its first problems, not millions.
MAX_FINDINGS = 100
HASH_HEX_LEN = 64
# 2^256 has 78 decimal digits: shorter amounts are below it without a big-int compare.
AMOUNT_DIGITS_MAX = 78
DEBITS_LIMITED = 1
CREDITS_LIMITED = 2


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed (or warned) check: a stable code, a message, and where."""

    code: str
    message: str
    seq: int | None = None
    checkpoint: int | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form (absent locations omitted)."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        for name in ("seq", "checkpoint", "line"):
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

    @property
    def ok(self) -> bool:
        """Return True if every check passed."""
        return not self.failures

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

    def to_dict(self) -> dict[str, object]:
        """Return the machine-readable report (``strongroom-audit verify --json``)."""
        return {
            "ok": self.ok, "summary": self.summary, "checks": self.checks,
            "failures": [f.to_dict() for f in self.failures],
            "failures_suppressed": self.suppressed,
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def render(self) -> str:
        """Return the human-readable report."""
        s = self.summary
        lines = [f"strongroom-audit: ledger export v{s.get('format_version', '?')}: "
                 f"{s.get('entries', 0)} entries, {s.get('checkpoints', 0)} checkpoints, "
                 f"{s.get('accounts', 0)} accounts"]
        lines += [f"  ok    {check}" for check in self.checks]
        lines += [f"  FAIL  {f.message}" for f in self.failures]
        if self.suppressed:
            lines.append(f"  FAIL  ... and {self.suppressed} more failures not shown")
        lines += [f"  warn  {w.message}" for w in self.warnings]
        verdict = "VERIFIED" if self.ok else f"FAILED ({len(self.failures) + self.suppressed} problems)"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


class _EntryStruct(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The canonical entry object, fields in canonical (sorted) order for a cheap re-encode."""

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


_decode_entry = msgspec.json.Decoder(_EntryStruct).decode
_encode = msgspec.json.Encoder().encode


def _parse_entry(raw: bytes) -> _EntryStruct:
    """Parse canonical entry bytes; raise ValueError if they are not exactly canonical."""
    parsed = _decode_entry(raw)
    if _encode(parsed) != raw or not raw.isascii():
        # msgspec writes non-ASCII as UTF-8 where canonical form escapes it: ask the reference
        # parser, which accepts only the escaped (canonical) form.
        Entry.from_bytes(raw)
    amount = parsed.amount
    if (parsed.v != ENTRY_FORMAT_VERSION or not amount.isdigit() or amount.startswith("0")
            or (len(amount) >= AMOUNT_DIGITS_MAX and int(amount) >= AMOUNT_LIMIT)):
        raise ValueError(f"entry amount {amount[:90]!r} or version {parsed.v} is invalid "
                         f"(version {ENTRY_FORMAT_VERSION}, 0 < amount < 2^256)")
    if not ACTOR_PATTERN.match(parsed.actor):
        raise ValueError(f"entry actor {parsed.actor[:140]!r} is not user:<id> or service:<name>")
    return parsed


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
    """Balances replayed from entries: per account ``[asset, flags, dpend, dpost, cpend, cpost]``."""

    accounts: dict[int, list[Any]]
    pendings: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    totals: dict[str, list[int]] = field(default_factory=dict)
    negative_reported: set[int] = field(default_factory=set)


def verify_export(
    directory: Path,
    pinned_keys: Mapping[tuple[str, int], PublicKey] | None = None,
    trusted_checkpoints: Sequence[str] = (),
) -> Report:
    """Verify an export directory; ``pinned_keys`` default to the export's own keys.json."""
    report = Report()
    try:
        manifest = Manifest.from_dict(read_json(directory / MANIFEST_FILE))
        export_keys = parse_keys(read_json(directory / KEYS_FILE))
        accounts = _load_accounts(directory / ACCOUNTS_FILE)
        checkpoints = _load_checkpoints(directory / CHECKPOINTS_FILE, report)
    except FormatError as exc:
        report.fail("format_invalid", str(exc))
        return report
    report.summary.update(format_version=1, accounts=len(accounts), checkpoints=len(checkpoints))
    keys = _choose_keys(export_keys, pinned_keys, report)
    replay = _Replay({a.id: [a.asset, a.flags, 0, 0, 0, 0] for a in accounts.values()})
    by_size = {c.tree_size: c for c in checkpoints}
    scan = _scan_entries(directory / ENTRIES_FILE, by_size, replay, report)
    report.summary.update(entries=scan.count, head_seq=scan.last_seq, head_hash=scan.head_hash)
    _report_sequence(scan, report)
    _check_checkpoint_chain(checkpoints, keys, scan, report)
    _check_trusted(checkpoints, trusted_checkpoints, report)
    _check_balances(accounts, replay, report)
    _check_manifest(manifest, scan, len(checkpoints), len(accounts), report)
    return report


def _choose_keys(
    export_keys: Mapping[tuple[str, int], PublicKey],
    pinned: Mapping[tuple[str, int], PublicKey] | None,
    report: Report,
) -> Mapping[tuple[str, int], PublicKey]:
    if pinned is None:
        report.warn("keys_not_pinned", "checkpoint keys were taken from the export's own keys.json; "
                    "pin them independently with --keys for a check that does not trust the export")
        return export_keys
    for ident, key in sorted(export_keys.items()):
        known = pinned.get(ident)
        if known is not None and known.public_key != key.public_key:
            report.fail("key_mismatch", f"keys.json: key {ident[0]} v{ident[1]} differs from the "
                        "pinned key of that name and version")
    return pinned


def _load_accounts(path: Path) -> dict[int, AccountRecord]:
    accounts: dict[int, AccountRecord] = {}
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = AccountRecord.from_dict(msgspec.json.decode(line))
                except (msgspec.DecodeError, FormatError) as exc:
                    raise FormatError(f"{ACCOUNTS_FILE} line {number}: {exc}") from None
                if record.id in accounts:
                    raise FormatError(f"{ACCOUNTS_FILE} line {number}: account {record.id} appears twice")
                accounts[record.id] = record
    except OSError as exc:
        raise FormatError(f"cannot read {ACCOUNTS_FILE}: {exc.strerror}") from None
    return accounts


def _load_checkpoints(path: Path, report: Report) -> list[Checkpoint]:
    checkpoints: list[Checkpoint] = []
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise FormatError(f"cannot read {CHECKPOINTS_FILE}: {exc.strerror}") from None
    for number, raw in enumerate(raw_lines, start=1):
        try:
            checkpoints.append(Checkpoint.from_bytes(raw))
        except ValueError as exc:
            report.fail("checkpoint_malformed", f"{CHECKPOINTS_FILE} line {number}: {exc}", line=number)
    return checkpoints


def _scan_entries(
    path: Path, by_size: Mapping[int, Checkpoint], replay: _Replay, report: Report
) -> _Scan:
    """Stream the entries once: chain, Merkle frontier, checkpoint roots, replay (the hot loop)."""
    scan = _Scan()
    sha256, unhex, domain, node = hashlib.sha256, binascii.unhexlify, ENTRY_HASH_DOMAIN, NODE_PREFIX
    prev = bytes(32)
    accounts, ids, totals = replay.accounts, replay.ids, replay.totals
    stack: list[bytes] = []
    count = max_seq = 0
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; a with-block would indent the hot loop
    except OSError as exc:
        report.fail("format_invalid", f"cannot read {ENTRIES_FILE}: {exc.strerror}")
        return scan
    with handle:
        for line in handle:
            count += 1
            raw = line[65:-1]
            digest = sha256(domain + prev + raw).digest()
            try:
                stored = unhex(line[:64])
            except (binascii.Error, ValueError):
                stored = b""
            if stored != digest or line[64:65] != b" " or line[-1:] != b"\n":
                stored = _chain_mismatch(count, line, digest, report)
            prev = stored
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
                            f"({exc})", line=count)
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
                        and tid not in ids):
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
            if count in by_size:
                _check_root(by_size[count], stack, digest, replay, report)
                scan.roots_checked += 1
    scan.count, scan.last_seq, scan.head_hash = count, max_seq, prev.hex()
    return scan


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
        return _decode_entry(line[65:-1]).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _sequence_anomaly(scan: _Scan, line: int, seq: int, max_seq: int) -> None:
    if len(scan.late) + len(scan.gaps) >= MAX_FINDINGS:
        return
    if seq > max_seq + 1:
        scan.gaps.append((line, max_seq + 1, seq - 1))
    else:
        scan.late.append((line, seq, max_seq))


def _apply(e: _EntryStruct, replay: _Replay, report: Report) -> None:
    """Replay one entry's effect on balances and totals, checking what the ledger guarantees."""
    amount, kind = int(e.amount), e.kind
    debit, credit = replay.accounts.get(e.debit_account), replay.accounts.get(e.credit_account)
    if (debit is None or credit is None or debit is credit or debit[0] != e.asset
            or credit[0] != e.asset or amount <= 0 or e.id in replay.ids):
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


def _report_negatives(e: _EntryStruct, replay: _Replay, report: Report) -> None:
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
        report.fail("entry_invalid", f"entry seq {e.seq}: unknown kind {e.kind!r}", seq=e.seq)
        return False
    if held is None or held[:2] != (e.debit_account, e.credit_account):
        report.fail("pending_invalid", f"entry seq {e.seq}: {e.kind} of {e.pending_id!r}, which is "
                    "not an outstanding pending transfer between the same accounts", seq=e.seq)
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
    if e.id in replay.ids:
        reason = f"transfer id {e.id!r} was already used"
    elif e.debit_account not in replay.accounts or e.credit_account not in replay.accounts:
        reason = f"account {e.debit_account} or {e.credit_account} is not in accounts.jsonl"
    elif e.debit_account == e.credit_account:
        reason = f"debit and credit account are both {e.debit_account}"
    elif int(e.amount) <= 0:
        reason = f"amount was {e.amount}, must be positive"
    else:
        reason = f"asset {e.asset} does not match the accounts' assets"
    report.fail("entry_invalid", f"entry seq {e.seq}: {reason}", seq=e.seq)


def _negative(account_id: int, state: list[Any], seq: int, replay: _Replay, report: Report) -> None:
    if account_id in replay.negative_reported:
        return
    replay.negative_reported.add(account_id)
    report.fail("balance_negative", f"entry seq {seq}: account {account_id} ({state[0]}) breaks its "
                f"constraint (flags {state[1]}): debits pending {state[2]} + posted {state[3]}, "
                f"credits pending {state[4]} + posted {state[5]}", seq=seq)


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
            report.fail("checkpoint_totals_mismatch", f"checkpoint {checkpoint.number}: {asset} totals "
                        f"are {_totals_text(claimed)} in the checkpoint but {_totals_text(actual)} "
                        f"replayed from the entries", **where)


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
    report: Report,
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
    if checkpoints and len(report.failures) == bad:
        names = sorted({f"{c.key_name} v{c.key_version}" for c in checkpoints})
        report.checks.append(f"checkpoints: {len(checkpoints)} chained and signed ({', '.join(names)}), "
                             f"roots and totals match at every tree size")
    if scan.count > prev_last:
        report.warn("tail_unsigned", f"entries {prev_last + 1}..{scan.count} are not covered by a signed "
                    "checkpoint (chain hashes verified only)", seq=prev_last + 1)


def _check_signature(
    checkpoint: Checkpoint, keys: Mapping[tuple[str, int], PublicKey], report: Report
) -> None:
    where = {"checkpoint": checkpoint.number}
    key = keys.get((checkpoint.key_name, checkpoint.key_version))
    if key is None:
        report.fail("checkpoint_unknown_key", f"checkpoint {checkpoint.number}: signed by unknown key "
                    f"{checkpoint.key_name!r} v{checkpoint.key_version} (not among the pinned keys)",
                    **where)
    elif not checkpoint.verify_signature(key.public_key):
        report.fail("checkpoint_signature_invalid", f"checkpoint {checkpoint.number}: signature does "
                    f"not verify with key {checkpoint.key_name} v{checkpoint.key_version}", **where)


def _check_trusted(checkpoints: Sequence[Checkpoint], trusted: Sequence[str], report: Report) -> None:
    present = {c.hash() for c in checkpoints}
    for expected in trusted:
        if expected.lower() not in present:
            report.fail("trusted_checkpoint_missing", f"trusted checkpoint {expected[:16]}... is not in "
                        "the export: it was truncated or rewritten")


def _check_balances(accounts: Mapping[int, AccountRecord], replay: _Replay, report: Report) -> None:
    bad = len(report.failures)
    posted: dict[str, int] = {}
    pending: dict[str, int] = {}
    for account_id, record in sorted(accounts.items()):
        state = replay.accounts[account_id]
        claimed = [record.debits_pending, record.debits_posted, record.credits_pending,
                   record.credits_posted]
        if claimed != state[2:]:
            report.fail("balance_mismatch", f"account {account_id}: exported balances {claimed} differ "
                        f"from the replayed {state[2:]}")
        posted[record.asset] = posted.get(record.asset, 0) + record.credits_posted - record.debits_posted
        pending[record.asset] = pending.get(record.asset, 0) + record.credits_pending - record.debits_pending
    for asset in sorted(posted):
        if posted[asset] or pending[asset]:
            report.fail("asset_sum_nonzero", f"{asset}: account balances sum to {posted[asset]} posted, "
                        f"{pending[asset]} pending; double entry requires 0")
    if len(report.failures) == bad:
        report.checks.append(f"balances: replayed balances match all {len(accounts)} accounts; per-asset "
                             f"sums are zero ({', '.join(sorted(posted)) or 'no assets'})")
    if not replay.negative_reported:
        report.checks.append("constraints: no constrained account went negative at any point")


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
