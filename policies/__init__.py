"""Pure policy and access-control decisions: no Flask, no database, no I/O.

Modules, one per domain noun:
results (ResultCode, Refusal, PolicyError), policy_document / policy_json /
withdrawal_policy / velocity / price / default_policy (withdrawal policy),
approval / approver_registry / quorum / signature_scheme / policy_change
(signed M-of-N approvals), roles (permissions), api_key / request_signing /
replay_cache (signed API requests), mfa (TOTP).
"""
