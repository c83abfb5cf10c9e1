"""The ledger entries that settle an outgoing transaction once the chain has decided.

Shared by the hot-wallet executor and the cold-bundle service, so both book a
confirmed or reverted transaction identically: the user's hold and the
wallet's reserve are posted (confirmed) or voided (reverted), and the gas
actually paid moves from the network-fees account to the paying wallet.
"""

from __future__ import annotations

from collections.abc import Sequence

from custody.chains.adapter import Receipt
from custody.ledger.codes import LedgerCode
from custody.ledger.entry import TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import TransferResult


def settlement_requests(
    *,
    prefix: str,
    receipt: Receipt,
    hold_transfer_id: str | None,
    reserve_transfer_id: str,
    network_fees_account: int,
    gas_account: int,
) -> list[TransferRequest]:
    """Return the linked batch that settles one transaction; ids derive from ``prefix``."""
    kind = TransferKind.POST if receipt.success else TransferKind.VOID
    requests = []
    if hold_transfer_id is not None:
        requests.append(TransferRequest(id=f"{prefix}:hold:{kind.value}", kind=kind,
                                        pending_id=hold_transfer_id, reference=receipt.txid))
    requests.append(TransferRequest(id=f"{prefix}:reserve:{kind.value}", kind=kind,
                                    pending_id=reserve_transfer_id, reference=receipt.txid))
    if receipt.fee_paid_minor > 0:
        requests.append(TransferRequest(id=f"{prefix}:gas", debit_account=network_fees_account,
                                        credit_account=gas_account, amount=receipt.fee_paid_minor,
                                        reference=f"gas of {receipt.txid}"))
    return requests


def refusal(results: Sequence[TransferResult]) -> str | None:
    """Return why a linked settlement batch was refused (the failing member's message), or None."""
    refused = [r for r in results if not r.ok and r.code is not LedgerCode.LINKED_TRANSFER_FAILED]
    return refused[0].message if refused else None
