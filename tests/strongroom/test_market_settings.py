"""Exchange market settings: feed, seed, dev mode and the demo maker from the environment."""

from __future__ import annotations

import pytest

from strongroom.settings import Settings, SettingsError


def test_market_settings_default_to_the_simulated_feed_without_dev_mode() -> None:
    s = Settings.from_env({"STRONGROOM_DATA_DIR": "/tmp/x"})
    assert (s.exchange_feed, s.exchange_feed_seed, s.exchange_dev_mode, s.exchange_demo_maker) == (
        "simulated", 1, False, False)


def test_market_settings_read_feed_seed_dev_mode_and_demo_maker() -> None:
    s = Settings.from_env({"STRONGROOM_DATA_DIR": "/tmp/x", "STRONGROOM_EXCHANGE_FEED": "ccxt",
                           "STRONGROOM_EXCHANGE_FEED_SEED": "42", "STRONGROOM_EXCHANGE_DEV_MODE": "1",
                           "STRONGROOM_EXCHANGE_DEMO_MAKER": "true"})
    assert (s.exchange_feed, s.exchange_feed_seed, s.exchange_dev_mode, s.exchange_demo_maker) == (
        "ccxt", 42, True, True)


@pytest.mark.parametrize(("name", "value"), [("STRONGROOM_EXCHANGE_FEED", "bloomberg"),
                                             ("STRONGROOM_EXCHANGE_FEED_SEED", "-1"),
                                             ("STRONGROOM_EXCHANGE_DEV_MODE", "maybe")])
def test_market_settings_refuse_invalid_values_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"STRONGROOM_DATA_DIR": "/tmp/x", name: value})
