"""Access control persistence: users, API keys, MFA, approver keys, policies, security log."""
