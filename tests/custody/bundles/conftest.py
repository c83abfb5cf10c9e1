"""Cold-transfer fixtures: the anvil node of tests/custody/wallets, reused here."""

from __future__ import annotations

from ..wallets.conftest import anvil, anvil_url

__all__ = ["anvil", "anvil_url"]
