"""The withdrawal policy Strongroom ships with, stored as JSON in the package.

`docs/policy-format.md` explains each rule and why it is there.
"""

from __future__ import annotations

from importlib import resources

from policies.policy_document import PolicyDocument
from policies.policy_json import parse_policy_json
from policies.quorum import QuorumRequirement

DEFAULT_POLICY_RESOURCE = "data/default_withdrawal_policy.json"

# Changing the withdrawal policy needs two admins other than the proposer.
DEFAULT_POLICY_CHANGE_REQUIREMENT = QuorumRequirement(count=2, group="admin")


def default_policy_json() -> bytes:
    """Return the shipped default policy document, byte for byte."""
    return resources.files("policies").joinpath(DEFAULT_POLICY_RESOURCE).read_bytes()


def load_default_policy() -> PolicyDocument:
    """Parse and return the shipped default policy."""
    return parse_policy_json(default_policy_json())
