"""Transaction monitoring runs on the server's schedule, idempotently: a repeated run raises nothing new."""

from __future__ import annotations

from flask import Flask

from strongroom.jobs import MONITORING_INTERVAL_S, server_jobs

from ..access.helpers import SignedClient
from ..access.test_withdrawals_api import whitelist, withdraw
from .test_monitoring_db import JUST_UNDER_10K_USD_BTC


def test_monitoring_job_is_scheduled_and_repeated_runs_raise_each_alert_once(
        app: Flask, alice: SignedClient) -> None:
    [job] = [j for j in server_jobs(app) if j.name == "compliance_monitoring"]
    assert job.interval_s == MONITORING_INTERVAL_S
    assert job.run() == []  # nothing to see yet
    whitelist(alice)
    for _ in range(3):
        assert withdraw(alice, JUST_UNDER_10K_USD_BTC).status_code == 201
    first = job.run()
    assert isinstance(first, list) and len(first) == 1
    assert job.run() == []  # the scheduler ran again: the same evidence raises nothing twice
