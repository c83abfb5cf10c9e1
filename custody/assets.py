"""The asset registry: codes and their minor-unit decimals."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset we hold or report in, with the number of decimals of its minor unit."""

    code: str
    decimals: int
    name: str

    def format(self, amount_minor: int) -> str:
        """Render an amount in minor units as a human-readable decimal string."""
        return f"{Decimal(amount_minor).scaleb(-self.decimals):.{self.decimals}f}"


ASSETS: dict[str, Asset] = {
    asset.code: asset
    for asset in (
        Asset("BTC", 8, "Bitcoin (satoshi)"),
        Asset("ETH", 18, "Ether (wei)"),
        Asset("USDC", 6, "USD Coin"),
        Asset("USD", 2, "US dollar (reporting only)"),
    )
}


def get_asset(code: str) -> Asset | None:
    """Return the registered asset for ``code``, or None."""
    return ASSETS.get(code)
