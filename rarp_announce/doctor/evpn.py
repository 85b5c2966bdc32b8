"""EVPN hosts: FRR's duplicate-address detection and its `freeze` (read through vtysh).

zebra counts the moves of each MAC between VTEPs; with its default of 5 moves in 180 s, a guest
live-migrated back and forth is flagged as a duplicate from its 5th move on. Without `freeze`
(the default) the MAC still follows; with `dup-addr-detection freeze` it stops moving, and the
guest stays unreachable on its new host until the freeze ends or is cleared (FRR's
doc/user/evpn.rst, "Duplicate Address Detection").
"""

from __future__ import annotations

import re

from rarp_announce.doctor import tools
from rarp_announce.doctor.report import Check, info, ok, skipped, warn

_MAC = re.compile(r"\b([0-9a-f]{2}(?::[0-9a-f]{2}){5})\b", re.IGNORECASE)


def evpn_checks(vty_dir: str | None, macs: list[str] | None = None) -> list[Check]:
    base = ["vtysh"] + (["--vty_socket", vty_dir] if vty_dir else [])
    ran = tools.run([*base, "-c", "show evpn"])
    if ran.missing:
        return [skipped("evpn", "FRR not checked: tool not installed (vtysh)")]
    if ran.error:
        return [info("evpn", "FRR does not answer (not running here): no EVPN checks")]
    text = ran.stdout
    if "Duplicate address detection" not in text:
        return [info("evpn", "FRR runs, but zebra knows no EVPN VNI here: no EVPN checks")]
    found: list[Check] = []
    enabled = re.search(r"Duplicate address detection:\s*Enable", text) is not None
    moves = re.search(r"max-moves (\d+), time (\d+)", text)
    freeze = re.search(r"Detection freeze (\S+)", text)
    limits = f"{moves.group(1)} moves in {moves.group(2)} s" if moves else "its limits"
    if not enabled:
        found.append(ok("evpn", "FRR's duplicate-address detection is off: a guest's MAC follows every migration"))
    elif freeze is None:
        found.append(ok("evpn", f"FRR's duplicate-address detection is on ({limits}) without freeze",
                        "a guest migrated that often is flagged as a duplicate but its MAC still follows"))
    else:
        how_long = "for good" if freeze.group(1) == "permanent" else f"for {freeze.group(1)} s"
        found.append(warn("evpn", f"FRR's duplicate-address detection freezes a MAC {how_long} after {limits}",
                          "a guest's MAC counted moving that often (where the source's port lingers: post-copy, a "
                          "slow source, ports moved by hand) stops moving: the fabric keeps sending its traffic "
                          "to the old VTEP whatever anyone announces",
                          "router bgp N / address-family l2vpn evpn / no dup-addr-detection freeze (permanent or its time); "
                          "free a frozen MAC with `clear evpn dup-addr vni all`"))
    duplicates = tools.run([*base, "-c", "show evpn mac vni all duplicate"])
    flagged = sorted({m.lower() for m in _MAC.findall(duplicates.stdout)}) if duplicates.ok else []
    if macs is not None:
        flagged = [mac for mac in flagged if mac in macs]
    if flagged:
        found.append(warn("evpn", f"MAC(s) flagged as duplicates now: {', '.join(flagged)}",
                          "zebra no longer advertises their moves" + (" (frozen)" if freeze else ""),
                          "clear evpn dup-addr vni all (once the guest stays put)"))
    return found
