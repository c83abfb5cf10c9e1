"""The result of checking one transaction against its intent: refusals and plain-words facts."""

from __future__ import annotations

from dataclasses import dataclass, field

from signer.results import SignerCode, SignerRefusal


@dataclass(slots=True)
class TxCheck:
    """Collects refusals and facts while a chain checker walks a transaction."""

    refusals: list[SignerRefusal] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def refuse(self, code: SignerCode, message: str) -> None:
        self.refusals.append(SignerRefusal(code, message))

    def fact(self, line: str) -> None:
        self.facts.append(line)
