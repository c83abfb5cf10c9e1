"""Withdrawal requests, whitelists and their approvals (policy decisions come from policies/)."""
