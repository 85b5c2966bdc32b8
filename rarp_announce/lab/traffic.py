"""Traffic for the guest, as the user of a migrated VM sees it: does it reach the guest?

`ClientTraffic` is a machine behind the physical switch that sends a unicast frame to each of
the guest's vNIC MACs (in its VLAN) every millisecond, before, during and after migrations.
`Delivered` watches a host's guest taps (vnet*) for those frames leaving towards the guest:
the first one after a migration is the moment the guest is reachable again on its new host.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

from rarp_announce.lab.netns import EXPERIMENTAL_ETHERTYPE, ethertype_of, inside
from rarp_announce.lab.observe import Watch

CLIENT_MAC = bytes.fromhex("02c11e000001")
_PAYLOAD = struct.Struct("!8sQd")  # marker, sequence, send time (wall clock)
_MARKER = b"rarp-lab"


def client_frame(mac: str, vlan: int | None, sequence: int) -> bytes:
    tag = b"\x81\x00" + vlan.to_bytes(2, "big") if vlan else b""
    payload = _PAYLOAD.pack(_MARKER, sequence, time.time())
    body = payload + bytes(46 - len(payload))
    return bytes.fromhex(mac.replace(":", "")) + CLIENT_MAC + tag + EXPERIMENTAL_ETHERTYPE.to_bytes(2, "big") + body


class ClientTraffic:
    """Unicast frames to each (MAC, VLAN) every `interval` seconds, from netns `ns` on `device`."""

    def __init__(self, ns: str, device: str, targets: list[tuple[str, int | None]], interval: float = 0.001) -> None:
        self.targets = targets
        self.interval = interval
        self._stop = threading.Event()
        with inside(ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sock.bind((device, 0))
        self._thread = threading.Thread(target=self._run, name=f"client-{ns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sequence = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            for mac, vlan in self.targets:
                try:
                    self._sock.send(client_frame(mac, vlan, sequence))
                except OSError:
                    pass  # a full queue drops a frame; the next one is a millisecond away
            sequence += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # late (a busy machine): do not burst to catch up

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@dataclass(frozen=True)
class Arrived:
    time: float  # kernel timestamp as the frame left for the guest
    device: str  # the guest tap it was written to
    mac: str


class Delivered(Watch[Arrived]):
    """Every client frame a host writes to one of its guest taps (frames the guest receives)."""

    def __init__(self, ns: str, prefix: str = "vnet") -> None:
        self.prefix = prefix
        super().__init__(ns, rcvbuf=8 << 20)

    def keep(self, stamp: float, frame: bytes, device: str, outgoing: bool) -> Arrived | None:
        # OUTGOING on a tap is the host writing to the guest.
        if not outgoing or not device.startswith(self.prefix):
            return None
        if ethertype_of(frame) != EXPERIMENTAL_ETHERTYPE or frame[6:12] != CLIENT_MAC:
            return None
        return Arrived(stamp, device, frame[:6].hex(":"))

    def first(self, mac: str, since: float) -> Arrived | None:
        return next((a for a in self.items() if a.mac == mac and a.time >= since), None)
