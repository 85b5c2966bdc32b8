"""Linux bridges: ports that do not learn, libvirt's macTableManager, static entries in the way,
VLAN filtering and the guest's VLANs on its port. Read from sysfs (the kernel's own answer, in
this network namespace: net/bridge/br_sysfs_if.c) and `bridge -j`, also when libvirt is down."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rarp_announce.doctor import tools
from rarp_announce.doctor.report import Check, fail, info, ok, skipped, warn
from rarp_announce.model import Target


@dataclass(frozen=True)
class Port:
    name: str
    learning: bool
    flood: bool  # unicast_flood: unknown unicast leaves through this port
    kind: str  # tap, vxlan, other


def linux_bridges(sysfs_root: str = "/sys") -> list[str]:
    base = f"{sysfs_root}/class/net"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    return [name for name in names if os.path.isdir(f"{base}/{name}/bridge")]


def ports(bridge: str, sysfs_root: str = "/sys") -> list[Port]:
    base = f"{sysfs_root}/class/net/{bridge}/brif"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    return [Port(name, _flag(f"{base}/{name}/learning"), _flag(f"{base}/{name}/unicast_flood"),
                 _kind(name, sysfs_root)) for name in names]


def vlan_filtering(bridge: str, sysfs_root: str = "/sys") -> bool:
    return _flag(f"{sysfs_root}/class/net/{bridge}/bridge/vlan_filtering", default=False)


def bridge_checks(bridges: Sequence[str], managed: Mapping[str, str], targets: Sequence[Target],
                  sysfs_root: str = "/sys") -> list[Check]:
    """Every bridge in `bridges`; `managed`: bridge -> libvirt network with macTableManager='libvirt'."""
    if not bridges:
        return [info("bridge", "no Linux bridge in scope on this host")]
    found: list[Check] = []
    for bridge in bridges:
        found += _one_bridge(bridge, managed.get(bridge), [t for t in targets if _bridge_of(t) == bridge], sysfs_root)
    return found


def _one_bridge(bridge: str, network: str | None, targets: list[Target], sysfs_root: str) -> list[Check]:
    found: list[Check] = []
    members = ports(bridge, sysfs_root)
    quiet = [p for p in members if not p.learning and p.kind != "vxlan"]
    if network is not None:
        found.append(info("bridge", f"{bridge} is libvirt network {network!r}'s bridge with macTableManager='libvirt'",
                          "libvirt turns learning and flooding off on each guest port and writes a static FDB "
                          "entry per vNIC itself; rarp-announce never replaces a static entry, so on this bridge "
                          "libvirt, not rarp-announce, points the guest's MAC at its new tap"))
    for port in quiet:
        if network is not None or (port.kind == "tap" and not port.flood):
            found.append(info("bridge", f"{bridge} port {port.name}: learning off, flooding "
                              f"{'on' if port.flood else 'off'} (libvirt's macTableManager='libvirt' pattern)",
                              "only the static entry libvirt writes delivers the guest's traffic there"))
        else:
            found.append(warn("bridge", f"{bridge} port {port.name} has learning off",
                              "the bridge learns nothing from frames entering it: QEMU's RARPs and a guest's own "
                              "frames never point its MAC at this port (rarp-announce's FDB write at RESUMED still "
                              "does, but nothing refreshes that entry: after the bridge's ageing time the guest's "
                              "traffic is flooded)",
                              f"bridge link set dev {port.name} learning on (unless libvirt or an SDN agent manages "
                              "this bridge's MAC table on purpose)"))
    if vlan_filtering(bridge, sysfs_root):
        found += _vlan_checks(bridge, targets)
    if targets:
        found += _static_entries(bridge, targets)
    if not found or all(c.status == "ok" for c in found):
        learning = f"learning on all {len(members)} port(s)" if members else "no ports yet"
        found.append(ok("bridge", f"{bridge}: {learning}"
                        + (", VXLAN ports learn nothing (EVPN's control plane does)" if any(p.kind == "vxlan" for p in members) else "")
                        + ("" if vlan_filtering(bridge, sysfs_root) else ", no VLAN filtering")))
    return found


def _vlan_checks(bridge: str, targets: list[Target]) -> list[Check]:
    found = [info("bridge", f"{bridge} filters by VLAN (vlan_filtering 1)",
                  "a guest's frames pass only in the VLANs configured on its port")]
    if not targets:
        return found
    ran = tools.run(["bridge", "-j", "vlan", "show"])
    if not ran.ok:
        return found + [skipped("bridge", f"{bridge}: VLANs per port not read: "
                                + ("tool not installed (bridge, iproute2)" if ran.missing else str(ran.error)))]
    configured = _port_vlans(ran.stdout)
    for target in targets:
        port = target.bridge_port.name if target.bridge_port is not None else None
        if port is None:
            continue
        vlans = configured.get(port, set())
        wanted = target.vlan if target.vlan is not None else None
        if wanted is not None and wanted not in vlans:
            found.append(fail("bridge", f"{bridge} port {port}: VLAN {wanted} of {target.mac} is not configured on it "
                              f"(it has {sorted(vlans) or 'none'})",
                              "the bridge drops the guest's frames and ours in that VLAN",
                              f"bridge vlan add dev {port} vid {wanted}"))
        elif wanted is None and not vlans:
            found.append(fail("bridge", f"{bridge} port {port}: no VLAN configured",
                              "a VLAN-filtering bridge drops every frame of a port without VLANs",
                              f"bridge vlan add dev {port} vid 1 pvid untagged"))
        else:
            found.append(ok("bridge", f"{bridge} port {port}: VLAN {wanted if wanted is not None else 'untagged'} "
                            f"configured for {target.mac}"))
    return found


def _static_entries(bridge: str, targets: list[Target]) -> list[Check]:
    """A static or permanent entry for a guest MAC anywhere but its own tap keeps it unreachable."""
    ran = tools.run(["bridge", "-j", "fdb", "show", "br", bridge])
    if not ran.ok:
        return [skipped("bridge", f"{bridge}: FDB not read: "
                        + ("tool not installed (bridge, iproute2)" if ran.missing else str(ran.error)))]
    try:
        entries = json.loads(ran.stdout or "[]")
    except ValueError:
        return [skipped("bridge", f"{bridge}: `bridge -j fdb show` printed no JSON")]
    found: list[Check] = []
    for target in targets:
        tap = target.bridge_port.name if target.bridge_port is not None else None
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("mac", "").lower() != target.mac:
                continue
            state, device = entry.get("state", ""), entry.get("ifname", "")
            if state not in ("static", "permanent") or device == tap:
                continue
            local = state == "permanent" or "self" in entry.get("flags", [])
            found.append(fail("bridge", f"{bridge}: {state} FDB entry for {target.mac} on {device}, not on the "
                              f"guest's tap {tap}",
                              ("a permanent entry is local: the host swallows the guest's traffic" if local else
                               "the bridge sends the guest's traffic there") +
                              "; rarp-announce never replaces a static or permanent entry, and it never moves",
                              f"bridge fdb del {target.mac} dev {device} master"
                              + (f" vlan {entry['vlan']}" if entry.get("vlan") else "")))
    return found


def _port_vlans(text: str) -> dict[str, set[int]]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return {}
    result: dict[str, set[int]] = {}
    for item in data if isinstance(data, list) else []:
        vids = result.setdefault(str(item.get("ifname", "")), set())
        for vlan in item.get("vlans", []):
            first, last = vlan.get("vlan", 0), vlan.get("vlanEnd", vlan.get("vlan", 0))
            vids.update(range(int(first), int(last) + 1))
    return result


def _bridge_of(target: Target) -> str | None:
    if target.bridge_port is not None:
        return target.bridge_port.bridge
    return target.device if target.ovs is None else None


def scope(all_bridges: Iterable[str], targets: Sequence[Target] | None) -> list[str]:
    """The bridges to check: every one, or (with --domain) those of the domain's targets."""
    bridges = list(all_bridges)
    if targets is None:
        return bridges
    wanted = {_bridge_of(t) for t in targets}
    return [b for b in bridges if b in wanted]


def _flag(path: str, default: bool = True) -> bool:
    try:
        with open(path) as handle:
            return handle.read().strip() not in ("0", "")
    except OSError:
        return default


def _kind(name: str, sysfs_root: str) -> str:
    base = f"{sysfs_root}/class/net/{name}"
    if os.path.exists(f"{base}/tun_flags"):
        return "tap"
    try:
        with open(f"{base}/uevent") as handle:
            if "DEVTYPE=vxlan" in handle.read():
                return "vxlan"
    except OSError:
        pass
    return "other"
