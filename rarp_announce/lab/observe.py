"""What the lab watches: RARP frames in a netns (all devices at once), and libvirt events.

A `Sniffer` is one packet socket in a netns, not bound to a device, read by a thread; every
RARP frame (tagged or not; the kernel strips tags into PACKET_AUXDATA, put back here) is kept
with its kernel timestamp and device. On the switch it shows what each host sent up; on a
host it shows QEMU's own frames arriving from the taps (before the drop rules).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from rarp_announce.lab.netns import capture_socket, ethertype_of, receive_frame

RARP = 0x8035
_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Seen:
    time: float  # kernel receive timestamp (wall clock, shared by all netns)
    device: str
    frame: bytes  # 802.1Q tag restored
    sent: bool = False  # leaving `device` (written by a local socket), not arriving on it

    @property
    def mac(self) -> str:
        return self.frame[6:12].hex(":")

    @property
    def vlan(self) -> int:
        return int.from_bytes(self.frame[14:16], "big") & 0x0FFF if self.frame[12:14] == b"\x81\x00" else 0


class Watch(Generic[_Item]):
    """One packet socket on every device of netns `ns`, read by a thread from creation to close();
    `keep` turns a frame worth keeping into an item (None: not kept)."""

    def __init__(self, ns: str, *, rcvbuf: int = 4 << 20) -> None:
        self.ns = ns
        self._items: list[_Item] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = capture_socket(ns, rcvbuf=rcvbuf)
        self._thread = threading.Thread(target=self._run, name=f"watch-{ns}", daemon=True)
        self._thread.start()

    def keep(self, stamp: float, frame: bytes, device: str, outgoing: bool) -> _Item | None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stamp, data, address = receive_frame(self._sock)
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                return
            # address: (ifname, proto, pkttype, hatype, addr)
            item = self.keep(stamp, data, address[0], address[2] == socket.PACKET_OUTGOING)
            if item is not None:
                with self._lock:
                    self._items.append(item)

    def items(self) -> list[_Item]:
        with self._lock:
            return list(self._items)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def __enter__(self) -> Watch[_Item]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sniffer(Watch[Seen]):
    """Every incoming RARP frame on every device of netns `ns`, from start to close()."""

    def __init__(self, ns: str, *, devices: tuple[str, ...] | None = None, prefix: str | None = None,
                 sent_on: tuple[str, ...] = ()) -> None:
        """Incoming frames on `devices` (all when None) whose name starts with `prefix`; plus
        frames leaving the devices in `sent_on` (what a local announcer wrote there)."""
        self.devices = devices
        self.prefix = prefix
        self.sent_on = sent_on
        super().__init__(ns)

    def keep(self, stamp: float, frame: bytes, device: str, outgoing: bool) -> Seen | None:
        if outgoing and device not in self.sent_on:
            return None
        if ethertype_of(frame) != RARP:
            return None
        if not outgoing and self.devices is not None and device not in self.devices:
            return None
        if not outgoing and self.prefix is not None and not device.startswith(self.prefix):
            return None
        return Seen(stamp, device, frame, outgoing)

    def since(self, start: float, until: float | None = None) -> list[Seen]:
        return [s for s in self.items() if s.time >= start and (until is None or s.time <= until)]


def check_frame(frame: bytes, mac: str, vlan: int | None) -> str | None:
    """None when `frame` is exactly QEMU's announcement for `mac` (tagged `vlan`); else why not.

    Decoded by scapy, an independent decoder, then compared byte by byte with the layout of
    QEMU's own announce frame (QEMU net/announce.c, announce_self_create).
    """
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import bind_layers

    bind_layers(Ether, ARP, type=RARP)
    bind_layers(Dot1Q, ARP, type=RARP)
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    body = b"\x00\x01\x08\x00\x06\x04\x00\x03" + raw_mac + bytes(4) + raw_mac + bytes(4) + bytes(18)
    tag = b"\x81\x00" + (vlan or 0).to_bytes(2, "big") if vlan else b""
    expected = b"\xff" * 6 + raw_mac + tag + b"\x80\x35" + body
    packet = Ether(frame)
    arp = packet.getlayer(ARP)
    if arp is None or arp.op != 3 or arp.hwsrc != mac or arp.hwdst != mac or arp.psrc != "0.0.0.0":
        return f"scapy does not decode a reverse request for {mac}: {packet.summary()}"
    got_vlan = packet[Dot1Q].vlan if packet.haslayer(Dot1Q) else None
    if got_vlan != vlan:
        return f"VLAN {got_vlan} instead of {vlan}"
    if frame != expected:
        return f"{len(frame)} bytes differ from QEMU's {len(expected)}: {frame.hex()}"
    return None


class Events:
    """Lifecycle events of libvirt connections, with the wall-clock time each arrived; and QEMU's
    own RESUME events, with the time QEMU stamped them.

    The arrival time of a lifecycle event is the lab's: on a loaded machine its thread may run
    milliseconds after the guest resumed, so it cannot order the resume against a frame. QEMU
    stamps each QMP event when it emits it (CLOCK_REALTIME, qapi/qmp-event.c
    qmp_event_build_dict), and emits RESUME just before it resumes the vCPUs (QEMU cpus.c
    vm_prepare_start); libvirt passes the stamp through unchanged (libvirt-qemu's
    virConnectDomainQemuMonitorEventRegister, seconds and micros). The kernel stamps captured
    frames on the same clock, so "our frame after the guest resumed" is one clock's ordering.
    Registering for monitor events does not taint the domain (only monitor commands do).

    libvirt needs its event loop registered before any connection opens, and run by a thread.
    """

    _loop_started = False
    _loop_lock = threading.Lock()

    def __init__(self) -> None:
        self.records: list[tuple[float, str, str, int, int]] = []  # time, host, domain, event, detail
        self.qemu_records: list[tuple[float, str, str, str]] = []  # QEMU's stamp, host, domain, QMP event
        self._cond = threading.Condition()
        self._start_loop()

    @classmethod
    def _start_loop(cls) -> None:
        import libvirt

        with cls._loop_lock:
            if cls._loop_started:
                return
            libvirt.virEventRegisterDefaultImpl()

            def run() -> None:
                while True:
                    libvirt.virEventRunDefaultImpl()

            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            cls._loop_started = True

    def watch(self, host: str, conn) -> int:
        import libvirt

        def callback(_conn, dom, event, detail, _opaque) -> None:
            with self._cond:
                self.records.append((time.time(), host, dom.name(), event, detail))
                self._cond.notify_all()

        def qemu_callback(_conn, dom, event, seconds, micros, _details, _opaque) -> None:
            with self._cond:
                self.qemu_records.append((seconds + micros / 1e6, host, dom.name(), event))
                self._cond.notify_all()

        import libvirt_qemu

        libvirt_qemu.qemuMonitorEventRegister(conn, None, "RESUME", qemu_callback, None, 0)
        return conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)

    def wait_qemu(self, host: str, event: str, since: float, timeout: float) -> float | None:
        """QEMU's own stamp of its first QMP `event` on `host` stamped after `since`, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, who, _dom, name in self.qemu_records:
                    if who == host and name == event and stamp >= since:
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait(self, host: str, event: int, details: tuple[int, ...], since: float, timeout: float) -> float | None:
        """Time of the first (`event`, detail in `details`) on `host` after `since`, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, who, _dom, ev, detail in self.records:
                    if who == host and ev == event and detail in details and stamp >= since:
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
