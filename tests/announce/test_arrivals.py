"""announce/arrivals.py's settings: what the table takes of the configuration, and nothing more."""

from __future__ import annotations

import dataclasses

from rarp_announce.announce.arrivals import ArrivalSettings
from rarp_announce.config import AddressesConfig, Config, DaemonConfig, OvsConfig
from rarp_announce.schedule import Schedule


def _config() -> Config:
    return Config(schedule=Schedule(rounds=3, initial_ms=20),
                  daemon=DaemonConfig(retry_timeout=30.0, retry_interval=0.25),
                  ovs=OvsConfig(wiring_timeout=45.0),
                  addresses=AddressesConfig(guest_announce=True))


def test_the_settings_are_the_configs_values() -> None:
    settings = ArrivalSettings.from_config(_config())
    assert settings == ArrivalSettings(schedule=Schedule(rounds=3, initial_ms=20), retry_timeout=30.0,
                                       retry_interval=0.25, wiring_timeout=45.0, guest_announce=True)


def test_a_commands_wait_bounds_both_waits_and_nothing_else() -> None:
    settings = ArrivalSettings.from_config(_config(), wait=0.0)
    assert (settings.retry_timeout, settings.wiring_timeout) == (0.0, 0.0)
    assert dataclasses.replace(settings, retry_timeout=30.0, wiring_timeout=45.0) == ArrivalSettings.from_config(_config())
