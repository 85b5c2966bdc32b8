"""The arrival rule shared by the daemon and the hook's waiter, against libvirt's own constants."""

from __future__ import annotations

import pytest

from rarp_announce.virt import arrival_steps as arrivals
from rarp_announce.virt.arrival_steps import Step, classify


def test_constants_match_libvirt(libvirt_module) -> None:
    lv = libvirt_module
    pairs = {
        "EVENT_DEFINED": lv.VIR_DOMAIN_EVENT_DEFINED, "EVENT_UNDEFINED": lv.VIR_DOMAIN_EVENT_UNDEFINED,
        "EVENT_STARTED": lv.VIR_DOMAIN_EVENT_STARTED, "EVENT_SUSPENDED": lv.VIR_DOMAIN_EVENT_SUSPENDED,
        "EVENT_RESUMED": lv.VIR_DOMAIN_EVENT_RESUMED, "EVENT_STOPPED": lv.VIR_DOMAIN_EVENT_STOPPED,
        "STARTED_MIGRATED": lv.VIR_DOMAIN_EVENT_STARTED_MIGRATED,
        "SUSPENDED_MIGRATED": lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
        "SUSPENDED_POSTCOPY": lv.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
        "SUSPENDED_POSTCOPY_FAILED": lv.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED,
        "RESUMED_UNPAUSED": lv.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED,
        "RESUMED_MIGRATED": lv.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
        "RESUMED_POSTCOPY": lv.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY,
        "STOPPED_MIGRATED": lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
        "DOMAIN_RUNNING": lv.VIR_DOMAIN_RUNNING, "DOMAIN_PAUSED": lv.VIR_DOMAIN_PAUSED,
        "RUNNING_MIGRATED": lv.VIR_DOMAIN_RUNNING_MIGRATED, "PAUSED_MIGRATION": lv.VIR_DOMAIN_PAUSED_MIGRATION,
        "EVENT_ID_LIFECYCLE": lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, "RUNNING_UNPAUSED": lv.VIR_DOMAIN_RUNNING_UNPAUSED,
        "RUNNING_MIGRATION_CANCELED": lv.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED,
        "RUNNING_POSTCOPY": lv.VIR_DOMAIN_RUNNING_POSTCOPY,
    }
    for name, value in pairs.items():
        assert getattr(arrivals, name) == value, name


@pytest.mark.parametrize(
    "event, detail, incoming, parked, step",
    [
        (arrivals.EVENT_STARTED, arrivals.STARTED_MIGRATED, False, False, Step.INCOMING),
        (arrivals.EVENT_STARTED, 0, False, False, Step.IGNORE),  # a plain boot
        (arrivals.EVENT_RESUMED, arrivals.RESUMED_MIGRATED, True, False, Step.ARRIVED),
        (arrivals.EVENT_RESUMED, arrivals.RESUMED_MIGRATED, False, False, Step.ARRIVED),  # prepare missed
        (arrivals.EVENT_RESUMED, arrivals.RESUMED_POSTCOPY, True, False, Step.ARRIVED),
        (arrivals.EVENT_RESUMED, arrivals.RESUMED_UNPAUSED, False, True, Step.ARRIVED),  # paused migration
        (arrivals.EVENT_RESUMED, arrivals.RESUMED_UNPAUSED, False, False, Step.IGNORE),  # a user's unpause
        (arrivals.EVENT_SUSPENDED, arrivals.SUSPENDED_MIGRATED, True, False, Step.PARKED),
        (arrivals.EVENT_SUSPENDED, arrivals.SUSPENDED_MIGRATED, False, False, Step.GONE),  # the source: leaving
        (arrivals.EVENT_SUSPENDED, arrivals.SUSPENDED_POSTCOPY, False, False, Step.GONE),
        (arrivals.EVENT_SUSPENDED, 0, False, False, Step.IGNORE),  # a user's pause
        (arrivals.EVENT_SUSPENDED, arrivals.SUSPENDED_POSTCOPY_FAILED, False, False, Step.IGNORE),
        (arrivals.EVENT_STOPPED, arrivals.STOPPED_MIGRATED, False, False, Step.GONE),
        (arrivals.EVENT_UNDEFINED, 0, False, False, Step.GONE),
        (arrivals.EVENT_DEFINED, 0, True, False, Step.IGNORE),
    ],
)
def test_classify(event: int, detail: int, incoming: bool, parked: bool, step: Step) -> None:
    assert classify(event, detail, incoming=incoming, parked=parked) is step
