"""Demo data: platform accounts, two traders with deposits, one withdrawal hold.

Every transfer has a fixed id, so running the demo twice changes nothing the
second time: the ledger's idempotency does the work.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody.access.users import Users
from custody.api.services import AccessServices
from custody.keystore import KeystoreError
from custody.ledger.entry import AccountKind, TransferKind
from custody.ledger.posting import TransferRequest
from custody.ledger.service import AccountView, Ledger
from policies.api_key import Scope

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


# Demo people: a trader with a printed API key, two treasury approvers, an admin, an auditor.
DEMO_PEOPLE: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("alice", ("trader",), 2),
    ("bob", ("trader",), 1),
    ("treasury1", ("treasury",), 0),
    ("treasury2", ("treasury",), 0),
    ("admin", ("admin",), 0),
    ("auditor", ("auditor",), 0),
)
DEMO_KEY_USER = "alice"
DEMO_KEY_LABEL = "demo"


def ensure_demo_people(users: Users) -> None:
    """Create the demo users with their roles and KYC tiers, if they are not there yet.

    The wallet demo deposits for alice and bob: as unknown owners (tier 0) compliance
    would hold every deposit of theirs for review instead of crediting it.
    """
    from custody.access.users import parse_roles

    for username, roles, kyc_tier in DEMO_PEOPLE:
        if users.find_user(username) is None:
            users.create_user(username, parse_roles(roles), kyc_tier=kyc_tier, actor="demo")


def seed_demo_access(services: AccessServices) -> list[str]:
    """Create the demo users (idempotent) and a fresh demo API key for alice; return lines to print.

    Each run revokes alice's previous demo key and prints a new one, because the
    secret of the old one was shown once and is not stored in clear anywhere.
    """
    services.policies.ensure_default()
    ensure_demo_people(services.users)
    for old in services.users.list_api_keys(DEMO_KEY_USER):
        if old.label == DEMO_KEY_LABEL and old.key.revoked_at_ms is None:
            services.users.revoke_api_key(DEMO_KEY_USER, old.key.key_id, actor="demo")
    try:
        created = services.users.create_api_key(DEMO_KEY_USER, parse_scopes_all(), label=DEMO_KEY_LABEL,
                                                actor="demo")
    except KeystoreError as exc:
        # API secrets are sealed by the keystore; without its passphrase there is no key to show.
        return [f"demo users ready; no demo API key: {exc.message}"]
    return [
        f"demo users: {', '.join(name for name, _, _ in DEMO_PEOPLE)}",
        f"demo API key for {DEMO_KEY_USER} (previous demo key revoked; shown once):",
        f"  X-Strongroom-Key: {created.credentials.key_id}",
        f"  secret:           {created.credentials.secret}",
        "  sign requests as in docs/request-signing.md; API docs at /api/v1/docs",
    ]


def parse_scopes_all() -> frozenset[Scope]:
    return frozenset(Scope)


def seed_demo_console(services: AccessServices) -> list[str]:
    """Give every demo person a fresh console password and authenticator; return lines to print.

    Demo only: each run replaces the demo people's passwords and TOTP secrets (shown once,
    here), the way the demo API key is replaced. Real users set their own.
    """
    import secrets

    import pyotp
    from sqlalchemy import delete

    from custody.access.models import MfaRow
    from strongroom.console.accounts import ConsoleAccounts

    accounts = ConsoleAccounts(services.sessions, services.mfa, services.clock)
    lines = ["web console demo logins (replaced on every `strongroom demo`; shown once):",
             f"  {'user':<10} {'role':<9} {'password':<22} TOTP secret (add to an authenticator app)"]
    for username, roles, _tier in DEMO_PEOPLE:
        password = secrets.token_urlsafe(12)
        accounts.set_password(username, password, actor="demo")
        with services.sessions.begin() as session:
            session.execute(delete(MfaRow).where(MfaRow.username == username))
        try:
            enrolment = services.mfa.enrol(username)
        except KeystoreError as exc:
            return [f"no console logins: {exc.message}"]
        # Confirmed with the previous step's code, so the code on screen now is still unused.
        code = pyotp.TOTP(enrolment.secret_base32).at(services.clock() // 1000 - 30)
        refusal = services.mfa.confirm(username, code)
        if refusal is not None:
            raise RuntimeError(f"demo authenticator for {username} not confirmed: {refusal.message}")
        lines.append(f"  {username:<10} {roles[0]:<9} {password:<22} {enrolment.secret_base32}")
    lines.append("  current code without an app: .venv/bin/python -c \"import pyotp; "
                 "print(pyotp.TOTP('SECRET').now())\"")
    return lines
