"""``strongroom-audit``: the auditor's offline tool (no database, no Flask, no network).

    strongroom-audit verify EXPORT_DIR --keys KEYS.json [--state STATE.json]
                     [--trusted-checkpoint HASH] [--json]
                     [--allow-unsigned-tail] [--allow-no-checkpoints] [--allow-unpinned-keys]
    strongroom-audit verify-liability PROOF.json --keys KEYS.json [--snapshot-hash HASH]
                     [--checkpoint HASH] [--root HASH] [--json]
    strongroom-audit keys-fingerprint KEYS.json
    strongroom-audit prove-inclusion EXPORT_DIR --seq N [--tree-size N]
    strongroom-audit prove-consistency EXPORT_DIR --first N --second N
    strongroom-audit verify-proof PROOF.json --keys KEYS.json [--json]

Strict by default: ``verify`` exits 0 only if every entry is covered by a
checkpoint signed by a pinned key. Exit status: 0 everything verified, 1 a
check failed, 2 unusable input (never a traceback). Every untrusted string in
human output is escaped, so a forged file cannot rewrite the verdict on screen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from custody.audit.checkpoint import Checkpoint
from custody.audit.export import (
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    PublicKey,
    keys_fingerprint,
    parse_keys,
)
from custody.audit.liability_proof import verify_liability_proof
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.proofs import consistency_document, inclusion_document, verify_document
from custody.audit.state import AuditState, load_state, save_state
from custody.audit.untrusted import FormatError, lines, printable, read_json
from custody.audit.verify import (
    ALLOW_NO_CHECKPOINTS,
    ALLOW_UNPINNED_KEYS,
    ALLOW_UNSIGNED_TAIL,
    ENTRY_LINE_MAX_BYTES,
    verify_export,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2
# Proof generation keeps every leaf hash in memory; refuse exports beyond this.
PROVE_MAX_ENTRIES = 10_000_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom-audit",
                                     description="Verify a Strongroom ledger export offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify an export directory (strict by default)")
    verify.add_argument("export_dir", type=Path)
    verify.add_argument("--keys", type=Path, help="pinned public keys (keys.json format)")
    verify.add_argument("--state", type=Path, help="the auditor's state file: the export must extend "
                        "the checkpoint verified last time; updated after a verified audit")
    verify.add_argument("--trusted-checkpoint", action="append", default=[], metavar="HASH",
                        help="a checkpoint hash obtained out of band that must be in the export")
    verify.add_argument("--json", action="store_true", help="print the machine-readable report")
    verify.add_argument("--strict", action="store_true",
                        help="accepted for compatibility: verification is strict by default")
    verify.add_argument("--allow-unsigned-tail", action="store_true",
                        help="DOWNGRADE: entries after the newest checkpoint only warn")
    verify.add_argument("--allow-no-checkpoints", action="store_true",
                        help="DOWNGRADE: an export without any signed checkpoint only warns")
    verify.add_argument("--allow-unpinned-keys", action="store_true",
                        help="DOWNGRADE: trust the export's own keys.json (proves nothing)")
    liability = sub.add_parser("verify-liability", help="verify one user's liability proof")
    liability.add_argument("proof", type=Path)
    liability.add_argument("--keys", type=Path, help="pinned public keys (keys.json format)")
    liability.add_argument("--snapshot-hash", help="the published snapshot hash the proof must match")
    liability.add_argument("--checkpoint", help="the signed checkpoint hash the snapshot must name")
    liability.add_argument("--root", help="the published liabilities root (hash) of the proof's asset")
    liability.add_argument("--allow-unpinned-keys", action="store_true",
                           help="DOWNGRADE: use the key embedded in the proof")
    liability.add_argument("--json", action="store_true")
    fingerprint = sub.add_parser("keys-fingerprint",
                                 help="print the fingerprint of a keys document (key ceremony)")
    fingerprint.add_argument("keys_file", type=Path)
    inclusion = sub.add_parser("prove-inclusion", help="compute an inclusion proof from an export")
    inclusion.add_argument("export_dir", type=Path)
    inclusion.add_argument("--seq", type=int, required=True)
    inclusion.add_argument("--tree-size", type=int, help="default: the newest checkpoint's tree size")
    consistency = sub.add_parser("prove-consistency", help="compute a consistency proof from an export")
    consistency.add_argument("export_dir", type=Path)
    consistency.add_argument("--first", type=int, required=True)
    consistency.add_argument("--second", type=int, required=True)
    proof = sub.add_parser("verify-proof", help="verify an inclusion or consistency proof document")
    proof.add_argument("proof", type=Path)
    proof.add_argument("--keys", type=Path, help="pinned public keys (keys.json format)")
    proof.add_argument("--allow-unpinned-keys", action="store_true",
                       help="DOWNGRADE: accept a proof whose checkpoint signature is not checked")
    proof.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return (and, as a console script, exit with) the status."""
    args = _parser().parse_args(argv)
    try:
        keys = _keys(args.keys) if getattr(args, "keys", None) else None
        if args.command == "verify":
            return _verify(args, keys)
        if args.command == "verify-liability":
            return _verify_liability(args, keys)
        if args.command == "verify-proof":
            return _verify_proof(args, keys)
        if args.command == "keys-fingerprint":
            return _fingerprint(args)
        return _prove(args)
    except (FormatError, ValueError, OSError, RecursionError, MemoryError) as exc:
        _err(f"strongroom-audit: unusable input: {exc}")
        return EXIT_UNUSABLE
    except Exception as exc:  # the documented contract: exit 2, never a traceback
        _err(f"strongroom-audit: unusable input ({type(exc).__name__})")
        return EXIT_UNUSABLE


def _out(text: str) -> None:
    print("\n".join(printable(line) for line in text.split("\n")))


def _err(text: str) -> None:
    print(printable(text), file=sys.stderr)


def _keys(path: Path) -> dict[tuple[str, int], PublicKey]:
    return parse_keys(read_json(path, "keys file"))


def _verify(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    if not (args.export_dir / "manifest.json").is_file():
        raise FormatError(f"{args.export_dir} is not a ledger export (no manifest.json)")
    allow = frozenset(name for flag, name in (
        (args.allow_unsigned_tail, ALLOW_UNSIGNED_TAIL), (args.allow_no_checkpoints, ALLOW_NO_CHECKPOINTS),
        (args.allow_unpinned_keys, ALLOW_UNPINNED_KEYS)) if flag)
    state = load_state(args.state) if args.state else None
    report = verify_export(args.export_dir, keys, args.trusted_checkpoint, allow=allow, state=state)
    newest = report.newest_checkpoint
    if args.state and report.ok and newest is not None:
        remembered = dict(state.snapshots) if state is not None else {}
        remembered.update(report.snapshot_hashes)
        save_state(args.state, AuditState(newest.number, newest.last_seq, newest.hash(), remembered))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _out(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def _verify_liability(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    proof = read_json(args.proof, "liability proof")
    if keys is None and not args.allow_unpinned_keys:
        raise FormatError("pass --keys with the pinned public keys (or the explicit downgrade "
                          "--allow-unpinned-keys)")
    pinned = None
    if keys is not None:
        snapshot = proof.get("snapshot") if isinstance(proof, dict) else None
        name = snapshot.get("key_name") if isinstance(snapshot, dict) else None
        version = snapshot.get("key_version") if isinstance(snapshot, dict) else None
        key = keys.get((name, version)) if isinstance(name, str) and isinstance(version, int) else None
        # An unknown key pins an all-zero key, so the signature check fails as it should.
        pinned = key.public_key if key is not None else bytes(32)
    check = verify_liability_proof(proof, pinned, pinned_snapshot_hash=args.snapshot_hash,
                                   pinned_checkpoint=args.checkpoint, pinned_root=args.root)
    if check.unusable:
        raise FormatError(check.problems[0])
    if args.json:
        print(json.dumps({"ok": check.ok, "problems": check.problems, "asset": check.asset,
                          "user_id": check.user_id, "balance": str(check.balance),
                          "total": str(check.total), "key_pinned": check.key_pinned,
                          "snapshot_hash": check.snapshot_hash, "checkpoint": check.checkpoint,
                          "notes": check.notes}, indent=2))
    elif check.ok:
        pinned_note = "" if check.key_pinned else " (key embedded in the proof: pin it with --keys)"
        _out(f"VERIFIED: {check.user_id} holds {check.balance} {check.asset} minor units, included in "
             f"total liabilities of {check.total}; snapshot signature valid{pinned_note}\n"
             f"  snapshot hash {check.snapshot_hash}\n  bound to checkpoint {check.checkpoint}"
             + "".join(f"\n  note  {n}" for n in check.notes))
    else:
        _out("FAILED:\n" + "\n".join(f"  {p}" for p in check.problems))
    return EXIT_OK if check.ok else EXIT_FAILED


def _verify_proof(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    doc = read_json(args.proof, "proof")
    if not isinstance(doc, dict):
        raise FormatError("a proof must be a JSON object")
    if keys is None and not args.allow_unpinned_keys:
        raise FormatError("pass --keys with the pinned public keys (or the explicit downgrade "
                          "--allow-unpinned-keys)")
    check = verify_document(doc, keys)
    if args.json:
        print(json.dumps({"ok": check.ok, "kind": check.kind, "problems": check.problems,
                          "notes": check.notes}, indent=2))
    else:
        _out(("VERIFIED: " if check.ok else "FAILED: ") + check.kind + "\n"
             + "\n".join([f"  FAIL  {p}" for p in check.problems] + [f"  note  {n}" for n in check.notes]))
    return EXIT_OK if check.ok else EXIT_FAILED


def _fingerprint(args: argparse.Namespace) -> int:
    keys = _keys(args.keys_file)
    _out(f"{keys_fingerprint(keys.values())}  ({len(keys)} keys: "
         + ", ".join(f"{name} v{version}" for name, version in sorted(keys)) + ")")
    return EXIT_OK


def _prove(args: argparse.Namespace) -> int:
    entries = _entry_bytes(args.export_dir)
    tree = MerkleTree(leaf_hash(raw) for raw in entries)
    checkpoints = {c.tree_size: c for c in _checkpoints(args.export_dir)}
    if args.command == "prove-inclusion":
        size = args.tree_size or (max(checkpoints) if checkpoints else tree.size)
        if not 1 <= args.seq <= size <= tree.size:
            raise ValueError(f"need 1 <= seq ({args.seq}) <= tree size ({size}) <= {tree.size} entries")
        doc = inclusion_document(tree, entries[args.seq - 1], args.seq, size, checkpoints.get(size))
    else:
        if not 1 <= args.first <= args.second <= tree.size:
            raise ValueError(f"need 1 <= first ({args.first}) <= second ({args.second}) <= {tree.size}")
        doc = consistency_document(tree, args.first, args.second, checkpoints.get(args.first),
                                   checkpoints.get(args.second))
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def _entry_bytes(directory: Path) -> list[bytes]:
    found: list[bytes] = []
    with open(directory / ENTRIES_FILE, "rb") as handle:
        for line in lines(handle, ENTRIES_FILE, ENTRY_LINE_MAX_BYTES):
            if len(found) >= PROVE_MAX_ENTRIES or line[64:65] != b" " or not line.isascii():
                raise FormatError(f"{ENTRIES_FILE} line {len(found) + 1}: not a hash, a space and "
                                  f"an ASCII entry (or more than {PROVE_MAX_ENTRIES} entries)")
            found.append(line[65:])
    return found


def _checkpoints(directory: Path) -> list[Checkpoint]:
    with open(directory / CHECKPOINTS_FILE, "rb") as handle:
        return [Checkpoint.from_bytes(raw) for raw in lines(handle, CHECKPOINTS_FILE)]


if __name__ == "__main__":
    sys.exit(main())
