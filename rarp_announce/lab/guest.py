"""The lab guest: no disk, 64 MiB, two vNICs (Linux bridge br0, and OVS ovsbr0 in VLAN 100).

It sits in firmware (no bootable device) and migrates in about two seconds. Option ROMs are
off so iPXE sends nothing: the only frames carrying its MACs are announcements. As with
OpenStack's Neutron, the OVS vNIC's network VLAN is not in the domain XML: the lab's wiring
agent sets it on the port in OVSDB (agent.py). The XML carries the dead VLAN instead, so that
libvirt plugs the port isolated (tag 4095) in the same ovs-vsctl transaction that creates it
(libvirt src/util/virnetdevopenvswitch.c, virNetDevOpenvswitchAddPort), on every host the
guest starts or arrives on, as os-vif's isolate_vif does: never a moment live but unwired.
A guest whose port is wired at once (`ovs_plug_vlan`) carries its network VLAN in the XML
instead, as on a plain libvirt host: libvirt plugs it wired in that same transaction, so it is
wired before QEMU's first frame however slow the machine is.

With `boot` (tinyguest.py), the guest runs a real tiny Linux instead, booted directly from a
kernel and initramfs, that tallies the client's frames on its serial console.
"""

from __future__ import annotations

import os
import random
import uuid as uuidlib
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from rarp_announce.resolve.addresses import METADATA_NS
from rarp_announce.resolve.ovsport import DEAD_VLAN  # Neutron's DEAD_VLAN_TAG: a port plugged until the agent wires it

OVS_VLAN = 100


@dataclass(frozen=True)
class Nic:
    mac: str
    bridge: str  # host bridge it plugs into
    vlan: int | None  # access VLAN on the switch (None: untagged)
    ovs: bool
    addresses: tuple[str, ...] = ()  # declared in the domain's metadata: announced with GARP / NA

    @property
    def switch_vlan(self) -> int:
        """The VLAN the switch learns this MAC in (0 for untagged frames)."""
        return self.vlan or 0

    @property
    def label(self) -> str:
        return f"{self.bridge}" + (f" VLAN {self.vlan}" if self.vlan else "")


@dataclass(frozen=True)
class DirectBoot:
    """A kernel and initramfs QEMU boots directly (libvirt's <os><kernel>), its console on a file."""

    kernel: str
    initrd: str
    cmdline: str
    serial_log: str  # appended to by the source's QEMU, then the destination's
    memory_mib: int = 96

    def os_xml(self) -> str:
        return (f"<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{escape(self.kernel)}</kernel>"
                f"<initrd>{escape(self.initrd)}</initrd><cmdline>{escape(self.cmdline)}</cmdline></os>")

    def serial_xml(self) -> str:
        # append='on': the destination's QEMU opens the same file after a migration and must not
        # truncate what the source's wrote (libvirt formatdomain.html, "Relationship to host").
        return f"\n    <serial type='file'><source path='{escape(self.serial_log)}' append='on'/><target port='0'/></serial>"


@dataclass(frozen=True)
class Guest:
    name: str
    nics: tuple[Nic, ...]
    kvm: bool
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    boot: DirectBoot | None = None  # None: no OS, the guest sits in firmware
    ovs_plug_vlan: int = DEAD_VLAN  # the tag libvirt plugs the OVS vNIC's port with (see the docstring)

    @property
    def macs(self) -> list[str]:
        return [nic.mac for nic in self.nics]

    def xml(self) -> str:
        interfaces = "".join(_interface(nic, self.ovs_plug_vlan) for nic in self.nics)
        declared = "".join(
            f"<ra:interface mac='{nic.mac}'>" + "".join(f"<ra:ip address='{ip}'/>" for ip in nic.addresses) + "</ra:interface>"
            for nic in self.nics if nic.addresses
        )
        metadata = f"\n  <metadata><ra:addresses xmlns:ra='{METADATA_NS}'>{declared}</ra:addresses></metadata>" if declared else ""
        return f"""<domain type='{"kvm" if self.kvm else "qemu"}'>
  <name>{escape(self.name)}</name>
  <uuid>{self.uuid}</uuid>{metadata}
  <memory unit='MiB'>{self.boot.memory_mib if self.boot else 64}</memory>
  <vcpu>1</vcpu>
  {self.boot.os_xml() if self.boot else "<os><type arch='x86_64' machine='pc'>hvm</type></os>"}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <video><model type='none'/></video>{interfaces}{self.boot.serial_xml() if self.boot else ""}
  </devices>
</domain>
"""


def _interface(nic: Nic, ovs_plug_vlan: int) -> str:
    extra = ""
    if nic.ovs:
        extra += f"\n      <virtualport type='openvswitch'/>\n      <vlan><tag id='{ovs_plug_vlan}'/></vlan>"
    if nic.vlan and not nic.ovs:
        extra += f"\n      <vlan><tag id='{nic.vlan}'/></vlan>"
    return f"""
    <interface type='bridge'>
      <mac address='{nic.mac}'/>
      <source bridge='{nic.bridge}'/>{extra}
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>"""


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def make_guest(*, kvm: bool | None = None, seed: int | None = None) -> Guest:
    """A guest with random locally administered QEMU-range MACs, named after this process."""
    rng = random.Random(seed)
    tail = lambda: ":".join(f"{rng.randrange(256):02x}" for _ in range(3))  # noqa: E731
    nics = (
        # On the router's subnet (topology.ROUTER_ADDRESSES), which it learns from our GARP / NA.
        Nic(f"52:54:00:{tail()}", "br0", None, False, ("10.99.0.10", "fd00:99::10")),
        Nic(f"52:54:00:{tail()}", "ovsbr0", OVS_VLAN, True, ("10.99.100.10",)),
    )
    return Guest(f"rarp-lab-{os.getpid()}", nics, kvm_usable() if kvm is None else kvm)
