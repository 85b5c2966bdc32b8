"""What every sink is: the announcer hands it a target and one of that target's prebuilt frames.

A sink is told each target once, ahead of time (`prepare`: open the socket, connect to the
bridge, build the message around each frame, look the guest's bridge port up), so that `send`
in a round is a single write, and the bridge FDB step before a target's first frame (`claim`)
is one netlink request.
Errors name the target's route (a device, or `bridge:port` for an OVS port) in a DeviceError.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from rarp_announce.model import Target


class Sink(Protocol):
    """Where the announcer writes frames, and what its callers need to know of it.

    Callers ask the sink, never its type: a new transport answers these and every trigger
    (the daemon, the hook's waiter, the commands) uses it through `open_sink` (factory.py).
    """

    offline: bool
    """True when nothing reaches the network (a pcap file, a dry run): a target is written
    whether or not its device is up on this host."""

    prints_frames: bool
    """True when the sink shows each frame itself (the dry run): a command adds no summary."""

    def destination(self, routes: Collection[str]) -> str:
        """Where the frames went, for a command's summary: "on br0, eth1" or "to FILE"."""

    async def port_number(self, bridge: str, port: str) -> int | None:
        """The OpenFlow number of OVS port `port` on `bridge`, asked of the bridge on this sink's
        own connection (when the OVS database cannot tell); None when there is no such port or
        the sink has no connection to ask on. DeviceError when the bridge cannot be reached."""

    async def prepare(self, target: Target, frames: Sequence[bytes]) -> None:
        """Get ready to send these frames for `target` without set-up; raise DeviceError if it cannot."""

    def claim(self, target: Target) -> str:
        """Before the first frame of a target with a Linux bridge port (`target.bridge_port`):
        point that bridge's FDB entry for the MAC at the guest's port, without blocking. Returns
        what was done, in words; raise DeviceError when it cannot (the frames still go out)."""

    def send(self, target: Target, frame: bytes) -> None:
        """Emit one frame of `target` now, without blocking; raise DeviceError when it cannot."""

    def close(self) -> None:
        """Release sockets and connections; the sink is not used afterwards."""
