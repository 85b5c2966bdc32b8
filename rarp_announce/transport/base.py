"""What every sink is: the announcer hands it a target and one of that target's prebuilt frames.

A sink is told each target once, ahead of time (`prepare`: open the socket, connect to the
bridge, build the message around each frame, look the guest's bridge port up), so that `send`
in a round is a single write, and the bridge FDB step before a target's first frame (`claim`)
is one netlink request.
Errors name the target's route (a device, or `bridge:port` for an OVS port) in a DeviceError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rarp_announce.model import Target


class Sink(Protocol):
    """Where the announcer writes frames."""

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
