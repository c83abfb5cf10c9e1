"""KYC tier withdrawal limits hold under concurrency: two requests together over the cap, one is blocked."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.withdrawals.service import WithdrawalInput

from ..access.helpers import SignedClient
from ..access.test_withdrawals_api import ADDRESS, whitelist
from .conftest import services
from .test_kyc import carol  # noqa: F401 - the tier-1 trader fixture

EACH_BTC = 1_200_000  # 0.012 BTC = 1,200 USD at the default price; two are 2,400 > tier 1's 2,000 a day


def _concurrently(calls: list[Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[index] = calls[index]()
        except Exception as exc:  # reported through the results
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_kyc_tier1_two_concurrent_withdrawals_over_daily_cap_exactly_one_passes(
    app: Flask, carol: SignedClient  # noqa: F811
) -> None:
    whitelist(carol)
    access = services(app)
    user = access.users.find_user("carol")
    assert user is not None and user.kyc_tier == 1
    results = _concurrently([
        lambda i=i: access.withdrawals.create(user, WithdrawalInput("BTC", EACH_BTC, ADDRESS), f"wd-race-{i}")
        for i in range(2)])
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.state for r in results) == ["approved", "blocked"]
    blocked = next(r for r in results if r.state == "blocked")
    assert blocked.decision()["rule_id"] == "tier1-daily-limit"
    ledger: Ledger = app.extensions["strongroom.ledger"]
    account = ledger.find_account("carol", "BTC", AccountKind.USER_AVAILABLE)
    assert account is not None and account.balance.debits_pending == EACH_BTC
