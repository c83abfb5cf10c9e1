"""Case exports: the CSV and the PDF (text read back with pypdf) carry the same case, alerts and comments."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pypdf
import pytest
from click.testing import CliRunner
from flask import Flask

from custody.compliance.reports import case_csv, case_pdf
from strongroom.cli import main

from ..access.helpers import SignedClient
from ..access.test_withdrawals_api import whitelist
from .conftest import LISTED_BTC, services


@pytest.fixture
def case(app: Flask, alice: SignedClient, officer: SignedClient, loaded: int) -> dict[str, object]:
    whitelist(alice, LISTED_BTC)
    [listed] = officer.get("/api/v1/compliance/cases").json["cases"]
    officer.post(
        f"/api/v1/compliance/cases/{listed['id']}/comment",
        json={"body": "Matches <ent> 90001 & more."},
        mfa=True,
    )
    return services(app).cases.get("officer1", listed["id"])


def test_case_csv_has_case_alert_evidence_and_comment_rows(case: dict[str, object]) -> None:
    rows = list(csv.reader(io.StringIO(case_csv(case))))
    assert rows[0] == ["section", "field", "value"]
    assert ["case", "username", "alice"] in rows and ["case", "kind", "sanctions"] in rows
    evidence = next(json.loads(r[2]) for r in rows if r[1] == "evidence")
    assert evidence["ent_num"] == 90001 and evidence["normalised"] == LISTED_BTC
    assert any(r[2] == "Matches <ent> 90001 & more." for r in rows)


def test_case_pdf_renders_and_its_text_reads_back(case: dict[str, object]) -> None:
    pdf = case_pdf(case)
    assert pdf.startswith(b"%PDF-")
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert f"Suspicious activity case {case['id']}: alice" in text
    assert "sanctions.address" in text and "Matches <ent> 90001 & more." in text
    assert case_pdf(case) == pdf  # deterministic (invariant mode)


def test_cli_case_report_writes_pdf_and_refuses_unknown_case(
    app: Flask, case: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "STRONGROOM_DATA_DIR": str(tmp_path / "data"),
        "STRONGROOM_DATABASE_URL": str(app.config["DATABASE_URL"]),
        "STRONGROOM_KEYSTORE_PASSPHRASE": "server keystore passphrase",
    }
    out = tmp_path / "case.pdf"
    result = CliRunner().invoke(
        main,
        [
            "compliance",
            "case-report",
            str(case["id"]),
            "--format",
            "pdf",
            "--out",
            str(out),
            "--officer",
            "officer1",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "alice" in pypdf.PdfReader(out).pages[0].extract_text()
    missing = CliRunner().invoke(main, ["compliance", "case-report", "999", "--out", str(out)], env=env)
    assert missing.exit_code == 1 and json.loads(missing.stderr)["error"] == "case_not_found"
