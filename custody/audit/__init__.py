"""Audit: signed ledger checkpoints, Merkle proofs, the ledger export and proof of reserves.

The pure modules (``merkle``, ``checkpoint``, ``export``, ``liabilities``,
``verify``, ``cli``) depend only on the documented formats, never on the
database or Flask, so the offline verifier (``strongroom-audit``) runs on an
auditor's machine. ``service`` and ``models`` are the database-backed side.
Nothing is imported here, so importing a pure module loads no database code.
"""
