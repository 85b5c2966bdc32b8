"""Neutron's OVS agent in miniature: it wires the guest's OVS port into its VLAN, at once or late.

OpenStack plugs a migrating guest's port on the destination as "dead" (os-vif isolate_vif:
tag 4095) and its agent moves it into the network's local VLAN seconds later; the VLAN is set
on the OVS port, never in the domain XML (Nova/Neutron bugs 1815989, 1901707). QEMU's five
RARPs go out meanwhile and are lost in the dead VLAN. In the lab, libvirt plugs the port dead
(the guest's XML carries tag 4095, guest.py), so it is never live but unwired, however late
this agent runs on a loaded machine. The agent reproduces the rest:

- `immediate`: the port is wired from the moment libvirt plugs it, as on a plain libvirt host:
  the guest's XML carries the network VLAN instead of the dead one (guest.py `ovs_plug_vlan`),
  so no agent races QEMU's first frames on a loaded machine (an agent that set the tag at
  STARTED/MIGRATED came 355 ms after them under load, and they left in VLAN 4095). The agent
  only checks, at STARTED/MIGRATED, that the port is in its VLAN;
- `late`: the port is dead until `delay` seconds after the guest resumed, as on a busy
  OpenStack host. Dead is what Neutron's agent does in port_dead(): tag 4095, and a flow that
  drops everything the port sends (OVS would otherwise flood VLAN 4095 out of trunk ports).
  The lab cannot know the tap's name before libvirt plugs it, so its drop flow matches the
  guest's MAC and is in place before the migration starts; port_dead() follows at
  STARTED/MIGRATED (the tag is 4095 from the plug already). Wiring removes the flow, then
  sets the VLAN. It waits for QEMU's own announcements to be over first (`qemu_over`): one
  that came between the two steps would leave in VLAN 4095 out of the lab's trunk (Neutron's
  physical bridges carry only mapped VLANs), one after them would count as ours. On a loaded
  machine QEMU's last frame came 2.1 s after the resume, past the 2 s delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rarp_announce.lab.netns import wait_until
from rarp_announce.lab.ovs import PrivateOVS
from rarp_announce.resolve.ovsport import DEAD_VLAN
from rarp_announce.virt.arrival_steps import EVENT_RESUMED, EVENT_STARTED, RESUMED_MIGRATED, RESUMED_POSTCOPY, STARTED_MIGRATED

Wiring = Literal["immediate", "late"]
QEMU_OVER_TIMEOUT = 120.0  # s; QEMU's schedule lasts 0.8 s: a bound so the agent never hangs
QEMU_SETTLE = 1.0  # s after QEMU's last frame: ovs-vswitchd may still be handling it (an upcall)

QemuOver = Callable[[], "float | None"]  # when QEMU's last announcement of this arrival was seen, or None yet


@dataclass
class Rewiring:
    """What the agent did on the destination during one migration (wall-clock times)."""

    port: str | None = None
    wired_start: float | None = None  # the `set port tag=` command began
    wired_at: float | None = None  # ... and returned (ovs-vswitchd applied it)
    errors: list[str] = field(default_factory=list)


class WiringAgent:
    def __init__(self, mac: str, vlan: int, wiring: Wiring = "late", delay: float = 2.0) -> None:
        self.mac = mac
        self.vlan = vlan
        self.wiring = wiring
        self.delay = delay

    def port_of(self, ovs: PrivateOVS, timeout: float = 60.0) -> str | None:
        """The live OVS port libvirt created for the guest's MAC (its external_ids:attached-mac).

        Live: ovs-vswitchd found its device (a kernel ifindex). When libvirt's del-port fails on a
        source (its ovs-vsctl timed out on a loaded machine), the gone tap's port stays in OVSDB with
        the MAC, its ofport, and ifindex 0; wiring that one would leave the guest's real port parked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = ovs.vsctl("--bare", "--columns=name,ifindex", "find", "Interface",
                              f'external_ids:attached-mac="{self.mac}"').split("\n\n")
            for record in found:
                name, _, ifindex = record.strip().partition("\n")
                if name and ifindex.strip().isdigit() and int(ifindex) > 0:
                    return name
            time.sleep(0.05)
        return None

    def block(self, ovs: PrivateOVS) -> None:
        """Drop everything the guest sends on this host until it is wired."""
        ovs.ofctl("add-flow", "ovsbr0", f"priority=2,dl_src={self.mac},actions=drop")

    def kill(self, ovs: PrivateOVS, port: str) -> None:
        """Neutron's port_dead(): the dead VLAN, and nothing the guest sends goes anywhere."""
        self.block(ovs)
        ovs.vsctl("set", "Port", port, f"tag={DEAD_VLAN}")

    def wire(self, ovs: PrivateOVS, port: str, vlan: int) -> None:
        ovs.ofctl("--strict", "del-flows", "ovsbr0", f"priority=2,dl_src={self.mac}")
        ovs.vsctl("set", "Port", port, f"tag={vlan}")

    def wire_now(self, ovs: PrivateOVS) -> str:
        """The guest booted on this host: give its port the VLAN (what the agent does at boot)."""
        port = self.port_of(ovs)
        if port is None:
            raise RuntimeError(f"no OVS port carries the guest's MAC {self.mac}")
        self.wire(ovs, port, self.vlan)
        return port

    def follow(self, ovs: PrivateOVS, events: object, host: str, since: float, timeout: float = 60.0,
               qemu_over: QemuOver | None = None) -> tuple[threading.Thread, Rewiring]:
        """Wire the port the destination plugs for this migration, as `wiring` says; returns at once.
        Late wiring also waits for `qemu_over` (see the module's docstring)."""
        record = Rewiring()
        if self.wiring == "late":
            self.block(ovs)  # before libvirt plugs the port: QEMU's first frame must not slip through

        def run() -> None:
            try:
                started = events.wait(host, EVENT_STARTED, (STARTED_MIGRATED,), since, timeout)  # type: ignore[attr-defined]
                if started is None:
                    record.errors.append("no STARTED/MIGRATED on the destination")
                    return
                record.port = self.port_of(ovs)
                if record.port is None:
                    record.errors.append(f"no OVS port for {self.mac} on the destination")
                    return
                if self.wiring == "immediate":
                    tag = ovs.vsctl("get", "Port", record.port, "tag").strip()
                    if tag != str(self.vlan):
                        record.errors.append(f"set-up: port {record.port} plugged with tag {tag}, not {self.vlan}")
                    return
                self.kill(ovs, record.port)
                resumed = events.wait(host, EVENT_RESUMED, (RESUMED_MIGRATED, RESUMED_POSTCOPY), since, timeout)  # type: ignore[attr-defined]
                if resumed is None:
                    record.errors.append("no RESUMED on the destination")
                    return
                time.sleep(max(0.0, resumed + self.delay - time.time()))
                if qemu_over is not None:
                    if not wait_until(lambda: qemu_over() is not None, QEMU_OVER_TIMEOUT, 0.02):
                        record.errors.append(f"set-up: QEMU's own announcements not over {QEMU_OVER_TIMEOUT:.0f} s "
                                             "after the resume; wired anyway")
                    last = qemu_over()
                    time.sleep(max(0.0, (last or 0.0) + QEMU_SETTLE - time.time()))
                self._timed_wire(ovs, record)
            except Exception as error:  # reported through the record: the migration goes on
                record.errors.append(f"{type(error).__name__}: {error}")

        thread = threading.Thread(target=run, name="wiring-agent", daemon=True)
        thread.start()
        return thread, record

    def _timed_wire(self, ovs: PrivateOVS, record: Rewiring) -> None:
        assert record.port is not None
        record.wired_start = time.time()
        self.wire(ovs, record.port, self.vlan)
        record.wired_at = time.time()
