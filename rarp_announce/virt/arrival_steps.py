"""When a libvirt lifecycle event means "this guest now runs here after a migration".

The daemon and the hook's standalone waiter both decide with this module, so the rule lives
in one place (libvirt's lifecycle events, virDomainEventResumedDetailType in
https://libvirt.org/html/libvirt-libvirt-domain.html): announce at the first RESUMED with
detail MIGRATED or POSTCOPY; never at STARTED/MIGRATED (the source guest is still live then);
a migration done paused is announced when the domain is first resumed.
"""

from __future__ import annotations

import enum

# libvirt's constants (include/libvirt/libvirt-domain.h), kept here so deciding needs no import
# of libvirt-python; tests check them against the module's own values.
EVENT_DEFINED = 0
EVENT_STARTED = 2
EVENT_SUSPENDED = 3
EVENT_RESUMED = 4
EVENT_STOPPED = 5
EVENT_UNDEFINED = 1

STARTED_MIGRATED = 1
SUSPENDED_MIGRATED = 1
SUSPENDED_POSTCOPY = 7
SUSPENDED_POSTCOPY_FAILED = 8
RESUMED_UNPAUSED = 0
RESUMED_MIGRATED = 1
RESUMED_POSTCOPY = 3
STOPPED_MIGRATED = 3

EVENT_ID_LIFECYCLE = 0  # VIR_DOMAIN_EVENT_ID_LIFECYCLE

DOMAIN_RUNNING = 1
DOMAIN_PAUSED = 3
RUNNING_MIGRATED = 2  # VIR_DOMAIN_RUNNING_MIGRATED: state reason of a domain that arrived by migration
RUNNING_UNPAUSED = 5  # VIR_DOMAIN_RUNNING_UNPAUSED
RUNNING_MIGRATION_CANCELED = 6  # VIR_DOMAIN_RUNNING_MIGRATION_CANCELED: a failed migration resumed the source
RUNNING_POSTCOPY = 10  # VIR_DOMAIN_RUNNING_POSTCOPY
PAUSED_MIGRATION = 2  # VIR_DOMAIN_PAUSED_MIGRATION


class Step(enum.Enum):
    """What one lifecycle event means for a domain's arrival on this host."""

    IGNORE = "ignore"
    INCOMING = "incoming"  # prepare phase: resolve targets, open sockets, build frames now
    ARRIVED = "arrived"  # the guest runs here now: announce
    PARKED = "parked"  # arrived paused (VIR_MIGRATE_PAUSED): announce at its first resume
    GONE = "gone"  # stopped or undefined here: forget it


def classify(event: int, detail: int, *, incoming: bool, parked: bool) -> Step:
    """Map (event, detail) to a step, given whether this domain is mid-arrival or parked here.

    `incoming`: a STARTED/MIGRATED (or a hook hand-off) was seen and no ARRIVED yet.
    `parked`: it arrived paused and has not been resumed since.
    """
    if event == EVENT_STARTED and detail == STARTED_MIGRATED:
        return Step.INCOMING
    if event == EVENT_RESUMED:
        if detail in (RESUMED_MIGRATED, RESUMED_POSTCOPY):
            return Step.ARRIVED
        if detail == RESUMED_UNPAUSED and parked:
            return Step.ARRIVED
        return Step.IGNORE
    if event == EVENT_SUSPENDED and incoming:
        # A migration with VIR_MIGRATE_PAUSED ends in SUSPENDED on the destination: the guest
        # is here but does not run yet.
        return Step.PARKED
    if event == EVENT_SUSPENDED and detail in (SUSPENDED_MIGRATED, SUSPENDED_POSTCOPY):
        # The source at switch-over: the guest is leaving this host (its ports are unplugged
        # before STOPPED/MIGRATED arrives, seconds later); a failed migration that resumes it
        # here reports RESUMED again.
        return Step.GONE
    if event in (EVENT_STOPPED, EVENT_UNDEFINED):
        return Step.GONE
    return Step.IGNORE
