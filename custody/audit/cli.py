"""``strongroom-audit``: the auditor's offline tool (no database, no Flask, no network).

    strongroom-audit verify EXPORT_DIR [--keys KEYS.json] [--trusted-checkpoint HASH] [--json] [--strict]
    strongroom-audit verify-liability PROOF.json [--keys KEYS.json] [--json]
    strongroom-audit prove-inclusion EXPORT_DIR --seq N [--tree-size N]
    strongroom-audit prove-consistency EXPORT_DIR --first N --second N
    strongroom-audit verify-proof PROOF.json [--keys KEYS.json] [--json]

Exit status: 0 everything verified, 1 a check failed, 2 unusable input.
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
    FormatError,
    PublicKey,
    parse_keys,
    read_json,
)
from custody.audit.liabilities import verify_liability_proof
from custody.audit.merkle import MerkleTree, leaf_hash
from custody.audit.proofs import consistency_document, inclusion_document, verify_document
from custody.audit.verify import verify_export

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom-audit",
                                     description="Verify a Strongroom ledger export offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify an export directory")
    verify.add_argument("export_dir", type=Path)
    verify.add_argument("--keys", type=Path, help="pinned public keys (keys.json format)")
    verify.add_argument("--trusted-checkpoint", action="append", default=[], metavar="HASH",
                        help="a checkpoint hash obtained out of band that must be in the export")
    verify.add_argument("--json", action="store_true", help="print the machine-readable report")
    verify.add_argument("--strict", action="store_true", help="treat warnings as failures")
    liability = sub.add_parser("verify-liability", help="verify one user's liability proof")
    liability.add_argument("proof", type=Path)
    liability.add_argument("--keys", type=Path, help="pinned public keys (keys.json format)")
    liability.add_argument("--json", action="store_true")
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
        return _prove(args)
    except (FormatError, ValueError, OSError) as exc:
        print(f"strongroom-audit: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE


def _keys(path: Path) -> dict[tuple[str, int], PublicKey]:
    return parse_keys(read_json(path))


def _verify(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    if not (args.export_dir / "manifest.json").is_file():
        raise FormatError(f"{args.export_dir} is not a ledger export (no manifest.json)")
    report = verify_export(args.export_dir, keys, args.trusted_checkpoint)
    if args.strict:
        for warning in report.warnings:
            report.fail(warning.code, warning.message, seq=warning.seq, checkpoint=warning.checkpoint,
                        line=warning.line)
        report.warnings = []
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def _verify_liability(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    proof = read_json(args.proof)
    if not isinstance(proof, dict):
        raise FormatError("a liability proof must be a JSON object")
    pinned = None
    if keys is not None:
        snapshot = proof.get("snapshot")
        snapshot = snapshot if isinstance(snapshot, dict) else {}
        key = keys.get((str(snapshot.get("key_name")), int(snapshot.get("key_version") or 0)))
        # An unknown key pins an all-zero key, so the signature check fails as it should.
        pinned = key.public_key if key is not None else bytes(32)
    check = verify_liability_proof(proof, pinned)
    if args.json:
        print(json.dumps({"ok": check.ok, "problems": check.problems, "asset": check.asset,
                          "user_id": check.user_id, "balance": str(check.balance),
                          "total": str(check.total), "key_pinned": check.key_pinned}, indent=2))
    elif check.ok:
        pinned_note = "" if check.key_pinned else " (key embedded in the proof: pin it with --keys)"
        print(f"VERIFIED: {check.user_id} holds {check.balance} {check.asset} minor units, included in "
              f"total liabilities of {check.total}; snapshot signature valid{pinned_note}")
    else:
        print("FAILED:\n" + "\n".join(f"  {p}" for p in check.problems))
    return EXIT_OK if check.ok else EXIT_FAILED


def _verify_proof(args: argparse.Namespace, keys: Mapping[tuple[str, int], PublicKey] | None) -> int:
    doc = read_json(args.proof)
    if not isinstance(doc, dict):
        raise FormatError("a proof must be a JSON object")
    check = verify_document(doc, keys)
    if args.json:
        print(json.dumps({"ok": check.ok, "kind": check.kind, "problems": check.problems,
                          "notes": check.notes}, indent=2))
    else:
        print(("VERIFIED: " if check.ok else "FAILED: ") + check.kind)
        print("\n".join([f"  FAIL  {p}" for p in check.problems] + [f"  note  {n}" for n in check.notes]))
    return EXIT_OK if check.ok else EXIT_FAILED


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
    with open(directory / ENTRIES_FILE, "rb") as handle:
        return [line[65:-1] for line in handle]


def _checkpoints(directory: Path) -> list[Checkpoint]:
    return [Checkpoint.from_bytes(raw) for raw in (directory / CHECKPOINTS_FILE).read_bytes().splitlines()]


if __name__ == "__main__":
    sys.exit(main())
