"""One domain's targets, resolved exactly as `rarp-announce targets --domain` does (the host's
resolver and its readiness check), each with where it would be announced and whether it is
ready now."""

from __future__ import annotations

import asyncio
from typing import Any

from rarp_announce.config import Config
from rarp_announce.doctor.report import Check, fail, info, ok
from rarp_announce.errors import AnnounceError
from rarp_announce.model import Resolution, Target


def resolve_domain(config: Config, conn: Any, name: str, ovs: tuple[Any, str | None]) -> tuple[Resolution | None, list[Check]]:
    from rarp_announce.resolve.host import resolve_once
    from rarp_announce.virt.connection import running_domain_xml

    try:
        _dom, document = running_domain_xml(conn, name)
        resolution = asyncio.run(resolve_once(document, config, conn, ovs))
    except AnnounceError as exc:
        return None, [fail("targets", f"domain {name}: {exc}", "its targets cannot be checked",
                           "give a domain running on this host (virsh list)")]
    return resolution, target_checks(resolution)


def target_checks(resolution: Resolution) -> list[Check]:
    name = resolution.domain or "(unnamed)"
    found: list[Check] = []
    if not resolution.targets:
        found.append(fail("targets", f"domain {name}: nothing to announce",
                          "no vNIC of it has a place on this host's network to announce from",
                          "see the skipped lines, and [uplinks] in the config for unmanaged taps"))
    for target in resolution.targets:
        where = _where(target)
        problem = resolution.problems.get(target.route)
        if problem is None:
            found.append(ok("targets", f"{name} {target.mac} ({target.interface or target.kind}): {where}: ready"))
        else:
            found.append(fail("targets", f"{name} {target.mac} ({target.interface or target.kind}): {where}: "
                              f"not ready: {problem}",
                              "an announcement now would not leave on this route (a daemon waits for it, bounded "
                              "by [daemon] retry_timeout / [ovs] wiring_timeout)",
                              "bring the device up or wire the port, then run doctor again"))
    for skipped in resolution.skipped:
        found.append(info("targets", f"{name} {skipped.mac or '-'} {skipped.interface} ({skipped.kind or '?'}) "
                          f"skipped: {skipped.reason}"))
    for refused in resolution.refused:
        found.append(info("targets", f"{name} {refused.mac}: address {refused.ip} from {refused.source} refused "
                          f"({refused.reason}): {refused.detail}"))
    for note in resolution.notes:
        found.append(info("targets", f"{name}: {note}"))
    return found


def _where(target: Target) -> str:
    vlan = "untagged" if target.vlan is None else f"VLAN {target.vlan} ({target.vlan_source})"
    if target.ovs is not None:
        port = f"OVS {target.ovs.bridge} port {target.ovs.name}"
        route = f"packet-out in_port {target.ovs.ofport if target.ovs.ofport is not None else '?'} on {port}"
    else:
        route = f"from {target.device}"
        if target.bridge_port is not None:
            route += f" after the FDB write on {target.bridge_port.label}"
    addresses = ", ".join(f"{a.ip} ({a.source})" for a in target.addresses)
    return f"{route}, {vlan}" + (f", addresses {addresses}" if addresses else ", RARP only")
