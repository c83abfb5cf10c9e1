"""Builders shared by the audit tests: a small but varied ledger, exports, and tampering tools."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.audit.checkpoint import Checkpoint
from custody.audit.export import CHECKPOINTS_FILE, ENTRIES_FILE, KEYS_FILE, MANIFEST_FILE
from custody.audit.verify import Report
from custody.ledger.entry import GENESIS_HASH, AccountKind, TransferKind, chain_hash
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger


def accounts(ledger: Ledger) -> dict[str, int]:
    """Create wallets, users and in-flight accounts in BTC and USDC; return ids by name."""
    ids: dict[str, int] = {}
    for asset in ("BTC", "USDC"):
        for kind in (AccountKind.HOT_WALLET, AccountKind.COLD_WALLET, AccountKind.WITHDRAWALS_IN_FLIGHT):
            ids[f"{kind.value}-{asset}"] = ledger.ensure_account("platform", asset, kind).id
        for user in ("alice", "bob"):
            ids[f"{user}-{asset}"] = ledger.ensure_account(user, asset, AccountKind.USER_AVAILABLE).id
    return ids


def single(tid: str, debit: int, credit: int, amount: int) -> TransferRequest:
    return TransferRequest(id=tid, debit_account=debit, credit_account=credit, amount=amount,
                           reference=f"ref {tid}")


def first_batch(ledger: Ledger, ids: dict[str, int]) -> None:
    """Deposits, a hold that is later partly posted, a hold that is voided (8 entries)."""
    ledger.submit([
        single("dep-alice-btc", ids["hot_wallet-BTC"], ids["alice-BTC"], 1_000),
        single("dep-bob-btc", ids["hot_wallet-BTC"], ids["bob-BTC"], 500),
        single("dep-alice-usdc", ids["cold_wallet-USDC"], ids["alice-USDC"], 10**30),
        TransferRequest(id="hold-alice", kind=TransferKind.PENDING, debit_account=ids["alice-BTC"],
                        credit_account=ids["withdrawals_in_flight-BTC"], amount=100),
        TransferRequest(id="hold-bob", kind=TransferKind.PENDING, debit_account=ids["bob-BTC"],
                        credit_account=ids["withdrawals_in_flight-BTC"], amount=50),
        single("trade-1", ids["alice-BTC"], ids["bob-BTC"], 7),
    ])
    ledger.submit([TransferRequest(id="void-bob", kind=TransferKind.VOID, pending_id="hold-bob"),
                   single("trade-2", ids["bob-BTC"], ids["alice-BTC"], 3)])


def second_batch(ledger: Ledger, ids: dict[str, int], count: int = 7) -> None:
    """A partial post of a hold made before the first checkpoint, then small trades."""
    ledger.transfer(TransferRequest(id="post-alice", kind=TransferKind.POST, pending_id="hold-alice",
                                    amount=60))
    ledger.submit([single(f"trade-b-{i}", ids["alice-BTC"], ids["bob-BTC"], i + 1)
                   for i in range(count - 1)])


# -- tampering with an export ------------------------------------------------------------------

def read_lines(directory: Path, name: str = ENTRIES_FILE) -> list[bytes]:
    return (directory / name).read_bytes().splitlines(keepends=True)


def write_entries(directory: Path, lines: list[bytes]) -> None:
    """Write entries and make the (unsigned) manifest agree, as a careful attacker would."""
    (directory / ENTRIES_FILE).write_bytes(b"".join(lines))
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["counts"]["entries"] = len(lines)
    if lines:
        last = lines[-1]
        manifest["head"] = {"seq": json.loads(last[65:])["seq"], "hash": last[:64].decode()}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def rechain(lines: list[bytes]) -> list[bytes]:
    """Recompute every stored chain hash, as a forger would."""
    prev, out = GENESIS_HASH, []
    for line in lines:
        raw = line[65:-1]
        prev = chain_hash(prev, raw)
        out.append(prev.encode() + b" " + raw + b"\n")
    return out


def set_amount(line: bytes, amount: int) -> bytes:
    entry = json.loads(line[65:])
    old = f'"amount":"{entry["amount"]}"'.encode()
    return line.replace(old, f'"amount":"{amount}"'.encode())


def read_checkpoints(directory: Path) -> list[Checkpoint]:
    return [Checkpoint.from_bytes(raw) for raw in (directory / CHECKPOINTS_FILE).read_bytes().splitlines()]


def write_checkpoints(directory: Path, checkpoints: list[Checkpoint], *, fix_manifest: bool = True) -> None:
    (directory / CHECKPOINTS_FILE).write_bytes(b"".join(c.to_bytes() + b"\n" for c in checkpoints))
    if fix_manifest:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        manifest["counts"]["checkpoints"] = len(checkpoints)
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def resign(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> Checkpoint:
    return checkpoint.with_signature(key.sign(checkpoint.signing_message()))


def evil_keys_document(key: Ed25519PrivateKey, name: str = "ledger-checkpoint") -> dict[str, object]:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"format": "strongroom.public-keys", "version": 1,
            "keys": [{"name": name, "version": 1, "type": "ed25519", "public_key": raw.hex()}]}


def replace_keys(directory: Path, document: dict[str, object]) -> None:
    (directory / KEYS_FILE).write_text(json.dumps(document))


def codes(report: Report) -> set[str]:
    return {f.code for f in report.failures}


def finding(report: Report, code: str) -> dict[str, object]:
    found = [f for f in report.failures if f.code == code]
    assert found, f"no {code} in {[f.message for f in report.failures]}"
    return found[0].to_dict()


# -- synthetic signed exports (the operator forging with its own key) ---------------------------

def signed_export(directory: Path, raws: list[bytes], key: Ed25519PrivateKey) -> dict:
    """Write an export of exactly ``raws`` (entry bytes, canonical or not) with a checkpoint over
    all of them signed by ``key``; accounts.jsonl and totals follow a naive replay. Return the
    pinned keys (``key``'s public key)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from custody.audit.checkpoint import FIRST_PREV_CHECKPOINT, AssetTotals
    from custody.audit.export import AccountRecord, ExportWriter, Manifest, PublicKey
    from custody.audit.merkle import MerkleTree, leaf_hash

    prev, lines = GENESIS_HASH, []
    accounts: dict[int, list] = {}
    totals: dict[str, list[int]] = {}
    held: dict[str, int] = {}
    for raw in raws:
        prev = chain_hash(prev, raw)
        lines.append(prev.encode() + b" " + raw + b"\n")
        try:
            _naive_replay(json.loads(raw), accounts, totals, held)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not an entry at all: the verifier's to report
    tree = MerkleTree(leaf_hash(raw) for raw in raws)
    unsigned = Checkpoint(number=1, first_seq=1, last_seq=len(raws), root=tree.root().hex(),
                          head_hash=prev, prev_checkpoint=FIRST_PREV_CHECKPOINT,
                          totals={a: AssetTotals(*t) for a, t in totals.items()},
                          timestamp_ms=1, key_name="ledger-checkpoint", key_version=1)
    checkpoint = resign(unsigned, key)
    writer = ExportWriter(directory)
    (directory / ENTRIES_FILE).write_bytes(b"".join(lines))
    writer.write_checkpoints([checkpoint])
    records = [AccountRecord(i, a[0], a[1], a[2], a[3], 1, *a[4:]) for i, a in accounts.items()]
    writer.write_accounts(records)
    public = PublicKey("ledger-checkpoint", 1, "ed25519",
                       key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    writer.write_keys([public])
    writer.write_lines("snapshots.jsonl", [])
    writer.write_lines("liabilities.jsonl", [])
    writer.write_manifest(Manifest(1, len(raws), prev, len(raws), 1, len(records), 0))
    return {("ledger-checkpoint", 1): public}


def _naive_replay(e: dict, accounts: dict[int, list], totals: dict[str, list[int]],
                  held: dict[str, int]) -> None:
    amount = int(e["amount"]) if str(e["amount"]).isdigit() and int(e["amount"]) < 2**256 else 0
    row = totals.setdefault(e["asset"], [0, 0, 0])
    row[0] += 1
    if e["kind"] == "open":
        accounts[e["debit_account"]] = [e["account_owner"], e["asset"], e["account_kind"],
                                        e["account_flags"], 0, 0, 0, 0]
        return
    debit, credit = accounts.get(e["debit_account"]), accounts.get(e["credit_account"])
    if debit is None or credit is None:
        return
    if e["kind"] == "single":
        debit[5] += amount
        credit[7] += amount
        row[1] += amount
    elif e["kind"] == "pending":
        debit[4] += amount
        credit[6] += amount
        row[2] += amount
        held[e["id"]] = amount
    elif e["kind"] in ("post", "void", "expire") and e["pending_id"] in held:
        pending = held.pop(e["pending_id"])
        posted = amount if e["kind"] == "post" else 0
        debit[4] -= pending
        credit[6] -= pending
        debit[5] += posted
        credit[7] += posted
        row[1] += posted
        row[2] -= pending


def open_raw(seq: int, account: int, owner: str, kind: str, flags: int, asset: str = "BTC") -> bytes:
    """The canonical bytes of an ``open`` entry."""
    from custody.ledger.entry import Entry

    return Entry(seq=seq, id=f"open:{account}", kind=TransferKind.OPEN, debit_account=account,
                 credit_account=account, asset=asset, amount=0, pending_id=None, timeout_s=0,
                 expires_ms=None, code=0, reference="", timestamp_ms=1, actor="service:ledger",
                 account_owner=owner, account_kind=kind, account_flags=flags).to_bytes()


def single_raw(seq: int, debit: int, credit: int, amount: int, asset: str = "BTC",
               reference: str = "") -> bytes:
    """The canonical bytes of a single transfer entry."""
    from custody.ledger.entry import Entry

    return Entry(seq=seq, id=f"t{seq}", kind=TransferKind.SINGLE, debit_account=debit,
                 credit_account=credit, asset=asset, amount=amount, pending_id=None, timeout_s=0,
                 expires_ms=None, code=0, reference=reference, timestamp_ms=1,
                 actor="service:test").to_bytes()
