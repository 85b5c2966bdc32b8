"""The network itself: a packet socket for a Linux device, an OpenFlow packet-out for an OVS port.

A vNIC on Open vSwitch must be announced as if the guest sent the frame from its own port: a
frame written into the bridge's internal port would teach OVS that the guest sits on the host
(OVS learns a source MAC on the port a frame enters by, ofproto/ofproto-dpif-xlate.c, and then
delivers the guest's traffic to the host). So the route is chosen by the target itself, never
by a fallback. A vNIC on a Linux bridge gets the bridge's FDB entry pointed at its tap first
(fdb.py), then its frames from the bridge device.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from rarp_announce.errors import DeviceError
from rarp_announce.model import Target
from rarp_announce.transport.fdb import BridgeFdb
from rarp_announce.transport.neigh import SviNeighbours
from rarp_announce.transport.raw import RawSocketSink

if TYPE_CHECKING:
    from rarp_announce.transport.openflow import OpenFlowSink


class WireSink:
    """Sends each target's frames the way its route needs; one connection per device or bridge."""

    offline = False
    prints_frames = False

    def __init__(self, openflow_endpoint: Callable[[str], str] | None = None) -> None:
        self.raw = RawSocketSink()
        self.fdb = BridgeFdb()
        self.neighbours = SviNeighbours()
        self._endpoint = openflow_endpoint
        self._openflow: OpenFlowSink | None = None

    @property
    def openflow(self) -> OpenFlowSink:
        if self._openflow is None:
            from rarp_announce.transport.openflow import OpenFlowSink, default_endpoint

            self._openflow = OpenFlowSink(self._endpoint or default_endpoint)
        return self._openflow

    def destination(self, routes: Collection[str]) -> str:
        return "on " + ", ".join(sorted(routes))

    async def port_number(self, bridge: str, port: str) -> int | None:
        return await self.openflow.port_number(bridge, port)

    async def prepare(self, target: Target, frames: Sequence[bytes]) -> None:
        if target.ovs is None:
            await self.raw.prepare(target, frames)
            if target.bridge_port is not None:
                # A port not found is no reason to hold the frames back: the write looks it up again.
                await self.fdb.prepare(target)
                await self.neighbours.prepare(target)
        else:
            await self.openflow.prepare(target, frames)

    def claim(self, target: Target) -> str:
        """The bridge FDB entry, then the SVI neighbour entries; one refusal does not stop the other."""
        done: list[str] = []
        refused: list[str] = []
        try:
            done.append(self.fdb.claim(target))
        except DeviceError as exc:
            refused.append(exc.reason)
        try:
            done.extend(self.neighbours.claim(target))
        except DeviceError as exc:
            refused.append(f"{exc.device}: {exc.reason}")
        if refused:
            route = target.bridge_port.label if target.bridge_port else target.route
            raise DeviceError(route, "; ".join(refused + [f"done: {part}" for part in done]))
        return "; ".join(done)

    def send(self, target: Target, frame: bytes) -> None:
        if target.ovs is None:
            self.raw.send(target, frame)
        else:
            self.openflow.send(target, frame)

    def close(self) -> None:
        self.raw.close()
        self.fdb.close()
        self.neighbours.close()
        if self._openflow is not None:
            self._openflow.close()
