"""The result of checking one transaction against its intent: refusals, warnings and facts.

Facts are plain-words lines; `details` holds the same facts in machine form
(for `inspect --json`); warnings are unusual but allowed things the
operator must accept explicitly before signing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from signer.results import SignerCode, SignerRefusal


@dataclass(slots=True)
class TxCheck:
    """Collects refusals, warnings and facts while a chain checker walks a transaction."""

    refusals: list[SignerRefusal] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    fee_minor: int | None = None  # The most this transaction can pay in fees, proven; None if unknown.
    bitcoin: Any = None  # signer.bitcoin.BitcoinSummary for Bitcoin transactions.

    def refuse(self, code: SignerCode, message: str) -> None:
        self.refusals.append(SignerRefusal(code, message))

    def fact(self, line: str) -> None:
        self.facts.append(line)

    def warn(self, line: str) -> None:
        self.warnings.append(line)
