"""The transfer terms approvers of a cold request bind: rule, chain, network, source wallet, fee cap.

Approvers sign these before any transaction exists, so they must be fixed by
the request and the platform's configuration alone: the chain that moves the
asset, that chain's network name as the signer's anchors spell it, the cold
wallet's name, and the chain's constant fee cap for the asset. The offline
signer derives the same subject from the bundle, so an approval counts there
only if the bundle carries exactly these terms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.bundles.chains import BundleChains
from custody.bundles.codes import BundleError
from custody.chains.adapter import ChainError
from custody.wallets.models import Wallet
from custody.wallets.wallet import Temperature
from policies.approval import TransferTerms

COLD = Temperature.COLD.value


class TransferTermsBook:
    """Resolve the terms of cold withdrawals and refills from the configured bundle chains."""

    def __init__(self, chains: BundleChains) -> None:
        self._chains = chains

    def cold(self, session: Session, asset: str, rule_id: str) -> TransferTerms | None:
        """Return the terms of a cold transfer of ``asset`` under ``rule_id``, or None if not configured.

        Read in the caller's session (on SQLite a second session would wait for it).
        """
        try:
            chain = self._chains.for_asset(asset)
        except BundleError:
            return None
        names = list(
            session.scalars(
                select(Wallet.name).where(Wallet.chain == chain.chain.value, Wallet.temperature == COLD)
            )
        )
        if len(names) != 1:
            return None
        return self.named(asset, rule_id, names[0])

    def named(self, asset: str, rule_id: str, source_wallet: str) -> TransferTerms | None:
        """Return the terms of a cold transfer of ``asset`` from the wallet called ``source_wallet``."""
        try:
            chain = self._chains.for_asset(asset)
            network = chain.network
        except (BundleError, ChainError):
            # Not configured, or the node cannot say which network it is on: the terms are unknown,
            # so an approval made now binds none and will not count for the offline signer.
            return None
        return TransferTerms(rule_id, chain.chain.value, network, source_wallet, chain.fee_cap_minor(asset))


class _TermsTaker(Protocol):
    terms: Any


def install_terms(chains: BundleChains, withdrawals: _TermsTaker, treasuries: Iterable[_TermsTaker]) -> None:
    """Make cold withdrawals and refills show (and verify approvals over) their transfer terms."""
    book = TransferTermsBook(chains)
    withdrawals.terms = book.cold
    for treasury in treasuries:
        treasury.terms = book.named
