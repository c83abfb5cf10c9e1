"""Suspicious-activity case exports: the case, its alerts with evidence and its comments, as CSV or PDF.

Both render the same rows (`case_rows`), so the PDF says exactly what the
CSV says. The PDF is built with reportlab (no network, no fonts beyond the
standard 14); a test reads its text back with pypdf.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

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
