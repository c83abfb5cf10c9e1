"""Demo data: platform accounts, two traders with deposits, one withdrawal hold.

Every transfer has a fixed id, so running the demo twice changes nothing the
second time: the ledger's idempotency does the work.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import AccountView, Ledger

PLATFORM = "platform"
DEMO_USERS = ("alice", "bob")
DEMO_ASSETS = ("BTC", "ETH", "USDC")
PLATFORM_KINDS = (
    AccountKind.HOT_WALLET, AccountKind.COLD_WALLET, AccountKind.FEES,
    AccountKind.INSURANCE_FUND, AccountKind.DEPOSITS_IN_FLIGHT,
    AccountKind.WITHDRAWALS_IN_FLIGHT, AccountKind.EXTERNAL,
)
# Deposits in minor units: 1.5 BTC, 20 ETH, 250,000 USDC for alice; half of that for bob.
DEPOSITS_MINOR = {"BTC": 150_000_000, "ETH": 20 * 10**18, "USDC": 250_000 * 10**6}
INSURANCE_MINOR = {"BTC": 10 * 10**8, "ETH": 100 * 10**18, "USDC": 5_000_000 * 10**6}


@dataclass(frozen=True, slots=True)
class DemoData:
    """What the demo created, for printing."""

    accounts: list[AccountView]
    transfers_created: int


def seed_demo(ledger: Ledger) -> DemoData:
    """Create the demo accounts and transfers (idempotent)."""
    accounts: dict[tuple[str, str, str], AccountView] = {}
    for asset in DEMO_ASSETS:
        for kind in PLATFORM_KINDS:
            accounts[(PLATFORM, asset, kind)] = ledger.ensure_account(PLATFORM, asset, kind)
        for user in DEMO_USERS:
            kind = AccountKind.USER_AVAILABLE
            accounts[(user, asset, kind)] = ledger.ensure_account(user, asset, kind)
    requests = []
    for asset in DEMO_ASSETS:
        cold = accounts[(PLATFORM, asset, AccountKind.COLD_WALLET)].id
        hot = accounts[(PLATFORM, asset, AccountKind.HOT_WALLET)].id
        insurance = accounts[(PLATFORM, asset, AccountKind.INSURANCE_FUND)].id
        requests.append(TransferRequest(
            id=f"demo-insurance-{asset}", debit_account=cold, credit_account=insurance,
            amount=INSURANCE_MINOR[asset], reference="demo insurance fund"))
        for divisor, user in enumerate(DEMO_USERS, start=1):
            requests.append(TransferRequest(
                id=f"demo-deposit-{user}-{asset}", debit_account=hot,
                credit_account=accounts[(user, asset, AccountKind.USER_AVAILABLE)].id,
                amount=DEPOSITS_MINOR[asset] // divisor, reference="demo deposit"))
    bob_usdc = accounts[("bob", "USDC", AccountKind.USER_AVAILABLE)].id
    in_flight = accounts[(PLATFORM, "USDC", AccountKind.WITHDRAWALS_IN_FLIGHT)].id
    requests.append(TransferRequest(
        id="demo-withdrawal-hold-bob-USDC", kind=TransferKind.PENDING, debit_account=bob_usdc,
        credit_account=in_flight, amount=1_000 * 10**6, reference="demo withdrawal hold"))
    results = ledger.submit(requests, linked=True)
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"demo seeding failed: {failed[0].message}")
    created = sum(1 for r in results if r.status.value == "created")
    return DemoData(ledger.list_accounts(), created)
