"""Helpers for policies/ tests: deterministic approver keys, a registry, subjects."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.approval import Approval, ApprovalSubject, SubjectKind, sign_approval
from policies.approver_registry import Approver, ApproverKey, ApproverRegistry
from policies.policy_document import WalletTemperature
from policies.roles import Role
from policies.signature_scheme import SignatureScheme, ed25519_public_bytes
from policies.withdrawal_policy import Destination, WithdrawalContext

NOW_MS = 1_750_000_000_000
HOUR_MS = 3_600_000


def private_key(seed: int) -> Ed25519PrivateKey:
    """Return a deterministic Ed25519 key, so failures reproduce."""
    return Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))


@dataclass(frozen=True)
class Signers:
    """Approvers alice, bob, carol (treasury), dave (treasury, two keys), erin (admin)."""

    registry: ApproverRegistry
    keys: dict[str, Ed25519PrivateKey]

    def approve(
        self,
        key_id: str,
        subject: ApprovalSubject,
        *,
        signed_at_ms: int = NOW_MS - 60_000,
        expires_at_ms: int = NOW_MS + HOUR_MS,
        approver_id: str | None = None,
    ) -> Approval:
        owner = approver_id or self.registry.keys[key_id].approver_id
        return sign_approval(
            self.keys[key_id],
            approver_id=owner,
            key_id=key_id,
            subject=subject,
            signed_at_ms=signed_at_ms,
            expires_at_ms=expires_at_ms,
        )


def build_signers() -> Signers:
    owners = {
        "alice-k1": "alice",
        "bob-k1": "bob",
        "carol-k1": "carol",
        "dave-k1": "dave",
        "dave-k2": "dave",
        "erin-k1": "erin",
        "frank-k1": "frank",
        "gina-k1": "gina",
    }
    groups = {
        "alice": {"treasury"},
        "bob": {"treasury"},
        "carol": {"treasury"},
        "dave": {"treasury"},
        "erin": {"admin"},
        "frank": {"admin"},
        "gina": {"admin", "compliance"},
    }
    keys = {key_id: private_key(i + 1) for i, key_id in enumerate(owners)}
    registry = ApproverRegistry.build(
        [Approver(a, frozenset(g)) for a, g in groups.items()],
        [ApproverKey(k, owners[k], SignatureScheme.ED25519, ed25519_public_bytes(keys[k])) for k in owners],
    )
    return Signers(registry, keys)


def withdrawal_subject(**changes: object) -> ApprovalSubject:
    fields: dict[str, object] = {
        "kind": SubjectKind.WITHDRAWAL,
        "subject_id": "wd-42",
        "policy_id": "default",
        "policy_version": 3,
        "asset": "BTC",
        "amount_minor": 150_000_000,
        "destination": "bc1qexampledestination",
    }
    fields.update(changes)
    return ApprovalSubject(**fields)  # type: ignore[arg-type]


def policy_json(*rules: dict[str, object], timelock_s: int = 86_400, version: int = 1) -> str:
    """Return a policy document with `rules` followed by a catch-all block."""
    import json

    catch_all = {
        "id": "catch-all",
        "when": {},
        "action": {"type": "block", "reason": "nothing else matched"},
    }
    return json.dumps(
        {
            "schema": "strongroom/withdrawal-policy/v1",
            "id": "test-policy",
            "version": version,
            "destination_timelock_s": timelock_s,
            "rules": [*rules, catch_all],
        }
    )


def context(**changes: object) -> WithdrawalContext:
    """Return a withdrawal context: 0.5 BTC at 60,000 USD from hot to an old whitelisted address."""
    fields: dict[str, object] = {
        "withdrawal_id": "wd-1",
        "account_id": "acct-1",
        "initiator_id": "user-1",
        "initiator_roles": frozenset({Role.TRADER}),
        "kyc_tier": 2,
        "asset": "BTC",
        "asset_decimals": 8,
        "amount_minor": 50_000_000,
        "usd_cents_per_unit": 6_000_000,
        "destination": Destination("bc1qdest", NOW_MS - 30 * 86_400_000),
        "source_wallet": WalletTemperature.HOT,
        "now_ms": NOW_MS,
    }
    fields.update(changes)
    return WithdrawalContext(**fields)  # type: ignore[arg-type]
