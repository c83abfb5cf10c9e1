"""Compliance: sanctions screening, alerts and cases (docs/compliance.md)."""
