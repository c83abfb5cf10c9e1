"""Registered approvers, their groups and their public keys.

The registry is a value: the DB layer (or the offline signer, from its
bundle) builds one and hands it to `verify_quorum`. An approver may hold
several keys (a laptop key and a hardware key), but a public key belongs
to exactly one approver, so one person cannot count twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policies.identifier import check_identifier
from policies.results import PolicyError, ResultCode
from policies.signature_scheme import ED25519_PUBLIC_KEY_BYTES, SignatureScheme

MAX_APPROVERS = 10_000
MAX_KEYS_PER_APPROVER = 16

_INVALID = ResultCode.APPROVER_REGISTRY_INVALID


@dataclass(frozen=True, slots=True)
class Approver:
    """A person who may approve, and the approval groups they belong to."""

    approver_id: str
    groups: frozenset[str]

    def __post_init__(self) -> None:
        check_identifier(self.approver_id, "approver_id", _INVALID)
        for group in self.groups:
            check_identifier(group, f"groups of {self.approver_id}", _INVALID)


@dataclass(frozen=True, slots=True)
class ApproverKey:
    """A registered public key; `revoked_at_ms` set once it must no longer count."""

    key_id: str
    approver_id: str
    scheme: SignatureScheme
    public_key: bytes
    revoked_at_ms: int | None = None

    def __post_init__(self) -> None:
        check_identifier(self.key_id, "key_id", _INVALID)
        check_identifier(self.approver_id, "approver_id", _INVALID)
        is_ed25519 = self.scheme is SignatureScheme.ED25519
        if is_ed25519 and len(self.public_key) != ED25519_PUBLIC_KEY_BYTES:
            raise PolicyError(
                _INVALID,
                f"key {self.key_id} public_key was {len(self.public_key)} bytes, "
                f"must be {ED25519_PUBLIC_KEY_BYTES} for ed25519",
            )

    def is_revoked(self, now_ms: int) -> bool:
        return self.revoked_at_ms is not None and self.revoked_at_ms <= now_ms


@dataclass(frozen=True, slots=True)
class ApproverRegistry:
    """Approvers and keys by id; build it with `ApproverRegistry.build`."""

    approvers: Mapping[str, Approver] = field(default_factory=dict)
    keys: Mapping[str, ApproverKey] = field(default_factory=dict)

    @classmethod
    def build(cls, approvers: Iterable[Approver], keys: Iterable[ApproverKey]) -> ApproverRegistry:
        """Index approvers and keys; raise `PolicyError` on any inconsistency."""
        by_id: dict[str, Approver] = {}
        for approver in approvers:
            if approver.approver_id in by_id:
                raise PolicyError(_INVALID, f"approver {approver.approver_id} is listed twice")
            by_id[approver.approver_id] = approver
        if len(by_id) > MAX_APPROVERS:
            raise PolicyError(_INVALID, f"{len(by_id)} approvers, at most {MAX_APPROVERS}")
        return cls(approvers=by_id, keys=_index_keys(keys, by_id))

    def key(self, key_id: str) -> ApproverKey | None:
        return self.keys.get(key_id)

    def approver(self, approver_id: str) -> Approver | None:
        return self.approvers.get(approver_id)

    def group_members(self, group: str) -> frozenset[str]:
        """Return the ids of approvers in `group` (to show "2 of 3" in the UI)."""
        return frozenset(a.approver_id for a in self.approvers.values() if group in a.groups)


def _index_keys(keys: Iterable[ApproverKey], approvers: Mapping[str, Approver]) -> dict[str, ApproverKey]:
    by_id: dict[str, ApproverKey] = {}
    owner_of_public_key: dict[bytes, str] = {}
    per_approver: dict[str, int] = {}
    for key in keys:
        if key.key_id in by_id:
            raise PolicyError(_INVALID, f"key {key.key_id} is listed twice")
        if key.approver_id not in approvers:
            raise PolicyError(_INVALID, f"key {key.key_id} names unknown approver {key.approver_id}")
        owner = owner_of_public_key.setdefault(key.public_key, key.approver_id)
        if owner != key.approver_id:
            raise PolicyError(
                _INVALID,
                f"key {key.key_id} of {key.approver_id} has the same public key as one of {owner}",
            )
        per_approver[key.approver_id] = per_approver.get(key.approver_id, 0) + 1
        if per_approver[key.approver_id] > MAX_KEYS_PER_APPROVER:
            raise PolicyError(
                _INVALID, f"approver {key.approver_id} has more than {MAX_KEYS_PER_APPROVER} keys"
            )
        by_id[key.key_id] = key
    return by_id
