"""Traffic for the guest, as the user of a migrated VM sees it: does it reach the guest?

`ClientTraffic` is a machine behind the physical switch that sends a unicast frame to each of
the guest's vNIC MACs (in its VLAN) every millisecond, before, during and after migrations.
`Delivered` watches a host's guest taps (vnet*) for those frames leaving towards the guest:
the first one after a migration is the moment the guest is reachable again on its new host.
"""

from __future__ import annotations

import bisect
import socket
import struct
import threading
import time
from array import array
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
        # Sequences start at the wall clock in ms and grow by one a round (at most one a ms), so a
        # later client (`lab migrate` after `lab up`) continues above an earlier one's: the tiny
        # guest's tally sees one stream. Sequence first + n went out at _sent_at[n] (wall clock),
        # to every target; the frames a full queue refused are in `failed` as (MAC, sequence):
        # never sent, so never lost.
        self.first = int(time.time() * 1000)
        self._sent_at = array("d")
        self.failed: list[tuple[str, int]] = []
        self._stop = threading.Event()
        with inside(ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sock.bind((device, 0))
        self._thread = threading.Thread(target=self._run, name=f"client-{ns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sequence = self.first
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._sent_at.append(time.time())
            for mac, vlan in self.targets:
                try:
                    self._sock.send(client_frame(mac, vlan, sequence))
                except OSError:  # a full queue drops a frame; the next one is a millisecond away
                    self.failed.append((mac, sequence))
            sequence += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # late (a busy machine): do not burst to catch up

    def sequence_at(self, moment: float) -> int:
        """The first sequence sent at or after wall-clock `moment` (the next one if none yet)."""
        return self.first + bisect.bisect_left(self._sent_at, moment)

    def sent_time(self, sequence: int) -> float | None:
        index = sequence - self.first
        return self._sent_at[index] if 0 <= index < len(self._sent_at) else None

    def sent_between(self, start: float, end: float) -> list[tuple[int, float]]:
        """(sequence, send time) of every round sent in [start, end) (wall clock), for the timelines."""
        low, high = bisect.bisect_left(self._sent_at, start), bisect.bisect_left(self._sent_at, end)
        return [(self.first + index, self._sent_at[index]) for index in range(low, high)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def sequence_of(frame: bytes) -> int | None:
    """The sequence number of a client frame (tagged or not), None for any other frame."""
    at = frame.find(_MARKER, 14, 30)  # after the header, with or without one 802.1Q tag
    if at < 0 or len(frame) < at + 16:
        return None
    return int.from_bytes(frame[at + 8:at + 16], "big")


@dataclass(frozen=True)
class Arrived:
    time: float  # kernel timestamp as the frame left for the guest
    device: str  # the guest tap it was written to
    mac: str
    sequence: int = -1


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
        sequence = sequence_of(frame)
        return Arrived(stamp, device, frame[:6].hex(":"), -1 if sequence is None else sequence)

    def first(self, mac: str, since: float) -> Arrived | None:
        return next((a for a in self.items() if a.mac == mac and a.time >= since), None)
