"""Report documents: suspicious-activity case exports (CSV, PDF) and user statements as PDF.

Both render the same rows (`case_rows`), so the PDF says exactly what the
CSV says. The PDF is built with reportlab (no network, no fonts beyond the
standard 14); a test reads its text back with pypdf.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

from custody.compliance.citation import Citation
from custody.compliance.statements import Statement

HEADER = ("section", "field", "value")


def case_rows(case: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return the report as (section, field, value) rows: case fields, then each alert, then comments."""
    rows = [
        ("case", name, "" if case[name] is None else str(case[name]))
        for name in (
            "id",
            "username",
            "kind",
            "state",
            "score",
            "title",
            "assignee",
            "opened_ms",
            "closed_by",
            "closed_ms",
            "resolution",
            "close_reason",
        )
    ]
    for alert in case["alerts"]:
        section = f"alert {alert['id']}"
        rows += [(section, name, str(alert[name])) for name in ("rule_id", "score", "subject", "created_ms")]
        rows.append((section, "evidence", json.dumps(alert["evidence"], sort_keys=True)))
    for comment in case["comments"]:
        rows.append(
            (
                f"comment {comment['id']}",
                f"{comment['kind']} by {comment['author']} at {comment['at_ms']}",
                comment["body"],
            )
        )
    return rows


def case_csv(case: dict[str, Any]) -> str:
    """Return the case report as CSV (header row, then `case_rows`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(case_rows(case))
    return out.getvalue()


def case_pdf(case: dict[str, Any]) -> bytes:
    """Return the case report as a PDF document."""
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer, pagesize=A4, title=f"Case {case['id']}", author="Strongroom compliance", invariant=True
    )
    story: list[Any] = [
        Paragraph(escape(f"Suspicious activity case {case['id']}: {case['username']}"), styles["Title"])
    ]
    section = ""
    for name, field, value in case_rows(case):
        if name != section:
            section = name
            story += [Spacer(1, 6), Paragraph(escape(name), styles["Heading2"])]
        story.append(Paragraph(f"<b>{escape(field)}</b>: {escape(value)}", styles["BodyText"]))
    document.build(story)
    return buffer.getvalue()


def _utc(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def statement_pdf(statement: Statement, citation: Citation | None = None) -> bytes:
    """Return a statement as a PDF: the same figures as `statement_csv`, integers in minor units."""
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    title = f"Statement {statement.username} {statement.asset}"
    document = SimpleDocTemplate(buffer, pagesize=A4, title=title, author="Strongroom", invariant=True)
    story: list[Any] = [
        Paragraph(escape(title), styles["Title"]),
        Paragraph(escape(f"Period {_utc(statement.start_ms)} to {_utc(statement.end_ms)} (end exclusive)"),
                  styles["BodyText"]),
        Paragraph(escape(f"Ledger account {statement.account_id}; amounts in {statement.asset} minor units"),
                  styles["BodyText"]),
        Spacer(1, 6),
    ]
    for name in ("opening_minor", "credits_minor", "debits_minor", "closing_minor"):
        story.append(Paragraph(f"<b>{escape(name)}</b>: {getattr(statement, name)}", styles["BodyText"]))
    if citation is not None:
        story += [Spacer(1, 6), Paragraph("Signed ledger checkpoint", styles["Heading2"])]
        story += [Paragraph(escape(line), styles["BodyText"]) for line in citation.lines()]
    story += [Spacer(1, 6), Paragraph(f"Movements ({len(statement.lines)})", styles["Heading2"])]
    for line in statement.lines:
        story.append(Paragraph(escape(
            f"{_utc(line.at_ms)} | seq {line.seq} | {line.entry_id} | {line.reference or '-'} | "
            f"credit {line.credit_minor} | debit {line.debit_minor} | balance {line.balance_minor}"),
            styles["BodyText"]))
    document.build(story)
    return buffer.getvalue()
