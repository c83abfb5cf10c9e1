"""Custody HTTP API blueprints (ledger, later wallets and withdrawals) and their error mapping."""
