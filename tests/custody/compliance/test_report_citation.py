"""Statements and tax reports cite the signed checkpoint they rest on, or say why none; never a forged one."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pypdf
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from custody.audit.models import AuditCheckpoint
from custody.audit.service import AuditService
from custody.compliance.citation import cite_latest
from custody.compliance.reports import statement_pdf
from custody.compliance.statements import build_statement, month_bounds, parse_statement_csv, statement_csv
from custody.compliance.tax import tax_report, tax_report_csv
from custody.keystore import LocalKeystore
from custody.ledger.entry import AccountKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import Ledger
from policies.roles import Role

from ..access.helpers import make_user
from .test_statements import DAY_MS, _history

JANUARY = month_bounds(2026, 1)


def _audit(ledger: Ledger, keystore: LocalKeystore, clock: Any) -> AuditService:
    return AuditService(ledger._sessions, ledger, keystore, clock=clock)


def _pdf_text(pdf: bytes) -> str:
    return "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def _deposit(ledger: Ledger, transfer_id: str, amount: int) -> None:
    hot = ledger.ensure_account("platform", "USDC", AccountKind.HOT_WALLET).id
    alice = ledger.ensure_account("alice", "USDC", AccountKind.USER_AVAILABLE).id
    ledger.transfer(TransferRequest(id=transfer_id, debit_account=hot, credit_account=alice, amount=amount))


def test_statement_checkpoint_after_activity_is_cited_with_its_seq_and_hashes(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    _history(ledger, clock)
    audit = _audit(ledger, keystore, clock)
    checkpoint = audit.create_checkpoint()
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    assert 0 < statement.rests_on_seq <= checkpoint.last_seq
    assert statement.rests_on_seq == max(line.seq for line in statement.lines)
    citation = cite_latest(audit, statement.rests_on_seq)
    assert citation.to_json() == {
        "rests_on_seq": statement.rests_on_seq, "checkpoint_reason": None,
        "checkpoint": {"number": checkpoint.number, "last_seq": checkpoint.last_seq,
                       "head_hash": checkpoint.head_hash, "checkpoint_hash": checkpoint.hash(),
                       "timestamp_ms": checkpoint.timestamp_ms, "key_version": checkpoint.key_version}}
    # The cited head hash is the ledger's chain hash at the checkpoint's last entry.
    head_seq, head_hash = ledger.head()
    assert (head_seq, head_hash) == (checkpoint.last_seq, citation.head_hash)
    text = statement_csv(statement, citation)
    cited = {row[1]: row[2] for row in csv.reader(io.StringIO(text)) if row[0] == "checkpoint"}
    assert cited["checkpoint_head_hash"] == checkpoint.head_hash
    assert cited["checkpoint_hash"] == checkpoint.hash()
    assert int(cited["checkpoint_last_seq"]) == checkpoint.last_seq and cited["checkpoint_reason"] == ""
    assert parse_statement_csv(text).closing_minor == statement.closing_minor  # still reads back
    pdf = "".join(_pdf_text(statement_pdf(statement, citation)).split())
    assert checkpoint.head_hash in pdf and checkpoint.hash() in pdf


def test_statement_without_any_checkpoint_cites_null_with_a_reason(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    _history(ledger, clock)
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    citation = cite_latest(_audit(ledger, keystore, clock), statement.rests_on_seq)
    assert citation.to_json()["checkpoint"] is None
    assert citation.reason == "no signed ledger checkpoint exists yet"
    assert "No signed checkpoint cited: no signed ledger checkpoint exists yet" in _pdf_text(
        statement_pdf(statement, citation))


def test_statement_activity_after_the_checkpoint_inside_the_period_is_not_covered(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    _history(ledger, clock)
    audit = _audit(ledger, keystore, clock)
    checkpoint = audit.create_checkpoint()
    clock.now_ms = JANUARY[0] + 5 * DAY_MS
    _deposit(ledger, "dep-late", 7)
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    assert statement.rests_on_seq > checkpoint.last_seq
    citation = cite_latest(audit, statement.rests_on_seq)
    assert citation.number is None and citation.head_hash is None
    assert citation.reason is not None
    assert f"covers entries up to seq {checkpoint.last_seq}" in citation.reason


def test_statement_activity_after_the_period_end_keeps_the_older_checkpoint_cited(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    _history(ledger, clock)
    audit = _audit(ledger, keystore, clock)
    checkpoint = audit.create_checkpoint()
    clock.now_ms = month_bounds(2026, 2)[0] + DAY_MS
    _deposit(ledger, "dep-february", 7)
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    assert cite_latest(audit, statement.rests_on_seq).checkpoint_hash == checkpoint.hash()


def test_statement_checkpoint_with_a_forged_signature_is_not_cited(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    _history(ledger, clock)
    audit = _audit(ledger, keystore, clock)
    checkpoint = audit.create_checkpoint()
    forged = checkpoint.with_signature(bytes(64)).to_bytes().decode("ascii")
    with ledger._sessions.begin() as session:  # an insider with database access rewrites the row
        session.execute(update(AuditCheckpoint).where(AuditCheckpoint.number == checkpoint.number)
                        .values(record=forged))
    statement = build_statement(ledger, "alice", "USDC", *JANUARY)
    citation = cite_latest(audit, statement.rests_on_seq)
    assert citation.number is None and citation.reason is not None and "does not verify" in citation.reason


def test_tax_report_csv_cites_the_covering_checkpoint(
    ledger: Ledger, keystore: LocalKeystore, clock: Any
) -> None:
    ledger.ensure_account("alice", "USDC", AccountKind.USER_MARGIN)
    report = tax_report(ledger, "alice", 2026)
    assert report.rests_on_seq == 0  # no movements: rests on nothing
    audit = _audit(ledger, keystore, clock)
    _history(ledger, clock)
    checkpoint = audit.create_checkpoint()
    rows = dict(csv.reader(io.StringIO(tax_report_csv(report, cite_latest(audit, report.rests_on_seq)))))
    assert rows["checkpoint_hash"] == checkpoint.hash()
    assert rows["checkpoint_head_hash"] == checkpoint.head_hash
    assert rows["rests_on_seq"] == "0"


def test_reports_api_statement_and_tax_carry_the_citation(
    app: Flask, client: FlaskClient, clock: Any, keystore: LocalKeystore
) -> None:
    ledger: Ledger = app.extensions["strongroom.ledger"]
    alice = make_user(app, client, clock, "alice", {Role.TRADER}, kyc_tier=2)
    officer = make_user(app, client, clock, "officer1", {Role.COMPLIANCE})
    _history(ledger, clock)
    january = {"asset": "USDC", "year": "2026", "month": "1"}
    r = alice.get("/api/v1/reports/statement", query=january)
    assert r.status_code == 200, r.json
    assert r.json["citation"]["checkpoint"] is None
    assert r.json["citation"]["checkpoint_reason"] == "no signed ledger checkpoint exists yet"
    checkpoint = _audit(ledger, keystore, clock).create_checkpoint()
    r = officer.get("/api/v1/compliance/users/alice/statement", query={**january, "format": "pdf"})
    assert r.status_code == 200, r.json
    cited = r.json["citation"]["checkpoint"]
    assert (cited["number"], cited["last_seq"], cited["head_hash"], cited["checkpoint_hash"]) == (
        checkpoint.number, checkpoint.last_seq, checkpoint.head_hash, checkpoint.hash())
    assert f"checkpoint,checkpoint_hash,{checkpoint.hash()}" in r.json["csv"]
    r = alice.get("/api/v1/reports/tax", query={"year": "2026"})
    assert r.status_code == 200, r.json
    assert r.json["citation"]["checkpoint"]["checkpoint_hash"] == checkpoint.hash()


def test_reports_cli_statement_without_checkpoint_says_so(sqlite_url: str, tmp_path: Any, clock: Any) -> None:
    from custody.db import make_engine, make_session_factory
    from strongroom.cli import main

    ledger = Ledger(make_session_factory(make_engine(sqlite_url)), clock=clock)
    _history(ledger, clock)
    env = {"STRONGROOM_DATA_DIR": str(tmp_path / "data"), "STRONGROOM_DATABASE_URL": sqlite_url,
           "STRONGROOM_KEYSTORE_PASSPHRASE": "cli test passphrase, not a secret"}
    out = tmp_path / "statement.csv"
    result = CliRunner().invoke(main, ["compliance", "statement", "--username", "alice", "--asset", "usdc",
                                       "--year", "2026", "--month", "1", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    citation = json.loads(result.output.strip().splitlines()[-1])["citation"]
    assert citation["checkpoint"] is None
    assert citation["checkpoint_reason"] == "no signed ledger checkpoint exists yet"
    assert "checkpoint,checkpoint_reason,no signed ledger checkpoint exists yet" in out.read_text()


def test_citation_documented_example_parses() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "compliance.md").read_text(encoding="utf-8")
    block = doc.split("<!-- citation-example -->\n```csv\n", 1)[1].split("```", 1)[0]
    statement = parse_statement_csv(block)
    opening, credits, debits = statement.opening_minor, statement.credits_minor, statement.debits_minor
    assert statement.closing_minor == opening + credits - debits
    cited = {row[1]: row[2] for row in csv.reader(io.StringIO(block)) if row[0] == "checkpoint"}
    assert set(cited) == {"rests_on_seq", "checkpoint_number", "checkpoint_last_seq", "checkpoint_head_hash",
                          "checkpoint_hash", "checkpoint_timestamp_ms", "checkpoint_key_version",
                          "checkpoint_reason"}
    assert int(cited["rests_on_seq"]) <= int(cited["checkpoint_last_seq"])
    for name in ("checkpoint_head_hash", "checkpoint_hash"):
        assert len(cited[name]) == 64 and int(cited[name], 16) >= 0, name
