"""The double-entry, append-only, hash-chained ledger.

``custody.ledger.entry`` is pure (no database) so offline verifiers can use it;
``custody.ledger.service`` is the database-backed ledger.
"""
