"""Open vSwitch: OVSDB reachable (how OVS vNICs are found, with their VLAN and wiring), each
bridge's OpenFlow management socket (BRIDGE.mgmt: where the packet-outs go), and flows that
would drop a packet-out: an explicit drop of RARP/ARP/NA, or, for a domain's port, what
`ofproto/trace` says a RARP entering from the guest's own port does (the packet-out runs the
bridge's pipeline with in_port = that port, actions=table)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from typing import Any

from rarp_announce.config import Config
from rarp_announce.doctor import tools
from rarp_announce.doctor.report import Check, info, ok, skipped, warn
from rarp_announce.model import Target

_OPENFLOW = "OpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14,OpenFlow15"  # whatever the bridge allows
_ANNOUNCE_MATCH = re.compile(r"(^|[ ,])(rarp|arp|dl_type=0x8035|dl_type=0x0?806|icmp_type=136)([ ,]|$)")


def ovsdb_read(config: Config) -> tuple[Any, list[Check]]:
    """(snapshot or None, the checks saying so)."""
    from rarp_announce.resolve.host import ovs_snapshot

    remote = config.ovs.remote()
    if remote is None:
        return None, [info("ovs", "OVSDB is never read ([ovs] db = \"\"): OVS vNICs are not announced")]
    path = remote[len("unix:"):] if remote.startswith("unix:") else None
    if config.ovs.db is None and path is not None and not os.path.exists(path):
        return None, [info("ovs", f"no Open vSwitch on this host (no OVSDB socket at {path})")]
    snapshot, error = asyncio.run(ovs_snapshot(config, timeout=2.0))
    if snapshot is None:
        return None, [warn("ovs", f"OVSDB at {remote} is unreachable: {error}",
                           "OVS vNICs (virtualport type openvswitch, vhost-user) are not announced: their port, "
                           "VLAN and wiring come from OVSDB",
                           "start ovsdb-server and ovs-vswitchd, or point [ovs] db at the running one")]
    bridges = snapshot.bridges()
    return snapshot, [ok("ovs", f"OVSDB at {remote} answers: {len(bridges)} bridge(s)"
                         + (f" ({', '.join(bridges)})" if bridges else ""))]


def ovs_checks(config: Config, snapshot: Any, targets: Sequence[Target] | None) -> list[Check]:
    if snapshot is None:
        return []
    bridges = snapshot.bridges()
    if targets is not None:
        bridges = [b for b in bridges if any(t.ovs is not None and t.ovs.bridge == b for t in targets)]
    found: list[Check] = []
    for bridge in bridges:
        endpoint = config.ovs.endpoint(bridge)
        if endpoint.startswith("unix:") and not os.path.exists(endpoint[len("unix:"):]):
            found.append(warn("ovs", f"bridge {bridge}: no OpenFlow management socket at {endpoint[5:]}",
                              "rarp-announce announces OVS vNICs with packet-outs through it",
                              f"is ovs-vswitchd running? set [ovs] rundir to the folder holding {bridge}.mgmt, "
                              f"or [ovs.openflow] {bridge} = \"tcp:HOST:PORT\""))
            continue
        found += _flow_drops(bridge, endpoint)
        for target in targets or ():
            if target.ovs is not None and target.ovs.bridge == bridge:
                found.append(_trace(config, bridge, target))
    return found


def _flow_drops(bridge: str, endpoint: str) -> list[Check]:
    ran = tools.run(["ovs-ofctl", "-O", _OPENFLOW, "dump-flows", endpoint])
    if not ran.ok:
        return [skipped("ovs", f"bridge {bridge}: flows not read: "
                        + ("tool not installed (ovs-ofctl)" if ran.missing else str(ran.error)))]
    found = []
    for line in ran.stdout.splitlines():
        flow = line.strip()
        match, _, actions = flow.partition("actions=")
        if actions.strip() != "drop" or not _ANNOUNCE_MATCH.search(match):
            continue
        shown = ", ".join(part for part in match.split(", ") if not part.startswith(
            ("cookie=", "duration=", "n_packets=", "n_bytes=", "idle_age=", "hard_age=")))
        found.append(warn("ovs", f"bridge {bridge}: flow '{shown.strip()} actions=drop' drops announcements",
                          "a packet-out runs the bridge's flows (actions=table), so the frames rarp-announce sends "
                          "as the guest's port would are dropped here too",
                          f"ovs-ofctl del-flows {bridge} '{shown.strip().rstrip(',')}', or let the agent that "
                          "owns the bridge wire the port"))
    return found or [ok("ovs", f"bridge {bridge}: management socket answers, no flow drops RARP, ARP or NA")]


def _trace(config: Config, bridge: str, target: Target) -> Check:
    assert target.ovs is not None
    port = target.ovs.name
    flow = f"in_port={port},dl_src={target.mac},dl_dst=ff:ff:ff:ff:ff:ff,dl_type=0x8035"
    rundir = config.ovs.run_dir()
    control = f"{rundir}/ovs-vswitchd.ctl"
    argv = ["ovs-appctl", "-t", control if os.path.exists(control) else "ovs-vswitchd", "ofproto/trace", bridge, flow]
    ran = tools.run(argv, env={"OVS_RUNDIR": rundir})
    if not ran.ok:
        return skipped("ovs", f"{bridge} port {port}: ofproto/trace not run: "
                       + ("tool not installed (ovs-appctl)" if ran.missing else str(ran.error)))
    actions = next((line.split(":", 1)[1].strip() for line in ran.stdout.splitlines()
                    if line.startswith("Datapath actions:")), "")
    if actions in ("", "drop"):
        return warn("ovs", f"{bridge} port {port}: a RARP from {target.mac} entering there is dropped "
                    f"(ofproto/trace {flow})",
                    "rarp-announce's packet-out takes exactly that path: it would reach nobody (a port still "
                    "in the dead VLAN 4095, or a drop flow for it)",
                    "wire the port (its agent sets its VLAN and flows), then run doctor again")
    return ok("ovs", f"{bridge} port {port}: a RARP from {target.mac} leaves ({actions})")
