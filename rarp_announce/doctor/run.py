"""The doctor's visit: every group of checks in order, also when libvirt or OVS is down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rarp_announce.config import Config, libvirt_uri
from rarp_announce.doctor import bridges, evpn, firewall, host, ovs, sources, targets
from rarp_announce.doctor.report import Check, fail, ok, skipped, warn
from rarp_announce.errors import AnnounceError
from rarp_announce.model import Target


@dataclass(frozen=True)
class Visit:
    config: Config
    connect: str | None = None  # --connect
    domain: str | None = None
    hooks_dir: str = "/etc/libvirt/hooks"
    frr_vty: str | None = None  # vtysh --vty_socket DIR; None: FRR's default (/var/run/frr)


def run_doctor(visit: Visit) -> list[Check]:
    config = visit.config
    checks: list[Check] = []
    status, why_not = host.daemon_status(config.daemon.control_socket)
    checks += host.daemon_checks(config.daemon.control_socket, status, why_not)
    checks += host.hook_checks(visit.hooks_dir, status is not None)
    checks += host.capability_checks(status)
    uri = libvirt_uri(visit.connect, config)
    conn, libvirt_lines = _libvirt(uri)
    checks += libvirt_lines
    snapshot, ovs_lines = ovs.ovsdb_read(config)
    in_scope: list[Target] | None = None
    target_lines: list[Check] = []
    if visit.domain is not None:
        if conn is None:
            target_lines.append(fail("targets", f"domain {visit.domain} not resolved: libvirt at {uri} is unreachable",
                                     "its targets cannot be read; every bridge on this host is checked instead",
                                     "start libvirtd, or give --connect URI"))
        else:
            error = None if snapshot is not None else _ovs_error(ovs_lines)
            resolution, target_lines = targets.resolve_domain(config, conn, visit.domain, (snapshot, error))
            in_scope = resolution.targets if resolution is not None else None
    managed = _managed_bridges(conn) if conn is not None else {}
    every = bridges.linux_bridges(config.sysfs_root)
    checks += bridges.bridge_checks(bridges.scope(every, in_scope), managed, in_scope or [], config.sysfs_root)
    checks += firewall.nft_checks()
    checks += firewall.ebtables_checks()
    checks += ovs_lines
    checks += ovs.ovs_checks(config, snapshot, in_scope)
    checks += evpn.evpn_checks(visit.frr_vty, [t.mac for t in in_scope] if in_scope is not None else None)
    checks += sources.source_checks(config)
    checks += target_lines
    if conn is not None:
        try:
            conn.close()
        except Exception:  # libvirt's close of a dead connection: nothing left to do
            pass
    return checks


def _libvirt(uri: str) -> tuple[Any, list[Check]]:
    try:
        from rarp_announce.virt.connection import open_connection
    except ImportError:
        return None, [skipped("libvirt", "libvirt not checked: libvirt-python is not installed")]
    try:
        conn = open_connection(uri, readonly=True)
    except AnnounceError as exc:
        return None, [warn("libvirt", f"libvirt is unreachable: {exc}",
                           "guests' XML cannot be read (nothing is announced until libvirtd is back); the bridges "
                           "are still checked below", "start libvirtd (systemctl start libvirtd), or give --connect URI")]
    return conn, [ok("libvirt", f"{uri} answers (read-only)")]


def _managed_bridges(conn: Any) -> dict[str, str]:
    """bridge -> libvirt network whose MAC table libvirt manages (<bridge macTableManager='libvirt'/>)."""
    import xml.etree.ElementTree as ET

    managed: dict[str, str] = {}
    try:
        networks = conn.listAllNetworks()
        for network in networks:
            element = ET.fromstring(network.XMLDesc(0)).find("bridge")
            if element is not None and element.get("macTableManager") == "libvirt" and element.get("name"):
                managed[element.get("name", "")] = network.name()
    except Exception:  # libvirt without the network driver, or a network gone while read
        return managed
    return managed


def _ovs_error(lines: list[Check]) -> str | None:
    return next((line.what for line in lines if line.status in ("warn", "info")), None)

