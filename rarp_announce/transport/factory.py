"""The one place a sink is chosen: every trigger (the daemon, the hook's waiter, the commands)
opens its sink here, so a new transport is added here and in its own module, nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from rarp_announce.errors import InputError
from rarp_announce.transport.base import Sink


def open_sink(
    *,
    pcap: str | None = None,
    dry_run: bool = False,
    openflow_endpoint: Callable[[str], str] | None = None,
    stream: TextIO | None = None,
) -> Sink:
    """A pcap file (`pcap`), a dry run printed on `stream` (stdout by default), or the network.

    `openflow_endpoint(bridge)` names each OVS bridge's OpenFlow endpoint (the config's
    `[ovs]`; a callable, so a daemon's reloaded config is read at each new connection).
    """
    if pcap is not None and dry_run:
        raise InputError("--pcap and --dry-run exclude each other: choose one")
    if pcap is not None:
        from rarp_announce.transport.pcap import PcapSink

        return PcapSink(pcap)
    if dry_run:
        from rarp_announce.transport.dryrun import DryRunSink

        return DryRunSink(stream)
    from rarp_announce.transport.wire import WireSink

    return WireSink(openflow_endpoint)
