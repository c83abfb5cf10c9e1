"""Fixtures for policies/ tests."""

from __future__ import annotations

import pytest

from policies.approval import ApprovalSubject

from .helpers import Signers, build_signers, withdrawal_subject


@pytest.fixture(scope="session")
def signers() -> Signers:
    return build_signers()


@pytest.fixture()
def subject() -> ApprovalSubject:
    return withdrawal_subject()
