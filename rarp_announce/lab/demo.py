"""`make demo`: the lab told as a story, for someone who has never heard of the product."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rarp_announce.lab.migration import NOMINAL_MS, Migration, summary
from rarp_announce.lab.session import Lab

Write = Callable[[str], None]

_INTRO = """\
rarp-announce lab demo: real live migrations between two hypervisors, on this one machine
==========================================================================================
When a virtual machine live-migrates, the physical switch still sends its traffic to the OLD
host's port until it sees a frame from the VM's MAC on the NEW port. QEMU sends 5 RARP frames
for that, but they are lost when the new port is not wired yet, and QEMU sends none at all for
SR-IOV or vhost-user NICs. rarp-announce sends them itself, from the destination host, the
moment the guest resumes there, on the right bridge and VLAN.

In this demo QEMU's own RARPs are lost on each host, as on a port that is not wired yet: an
nft rule drops them where they enter the Linux bridge (before it can learn the guest's MAC from
them, so rarp-announce must point the bridge's own FDB entry at the guest's tap), and the
guest's Open vSwitch port is plugged "dead"
(VLAN 4095) and wired into its VLAN a few seconds after the guest resumed, as OpenStack does.
So when the switch moves the VM's MACs to the new host's port, our frames alone did it. A
client behind the switch sends the guest a frame every millisecond: the guest is back when
those frames reach its tap on the new host.
"""


def _fdb_lines(entries: list[tuple[str, str]], lab: Lab) -> list[str]:
    assert lab.topology is not None
    owner = {port: host for host, net in lab.topology.hosts.items() for port in net.switch_ports.values()}
    lines = []
    for mac in lab.guest.macs:
        found = [port for port, learned in entries if learned == mac]
        where = ", ".join(f"port {p} (host {owner.get(p, '?')})" for p in found) or "not learned"
        lines.append(f"      {mac}  ->  {where}")
    return lines


def migration_story(m: Migration, lab: Lab, write: Write) -> None:
    write("    switch FDB before (the MACs sit behind the source host):")
    for line in _fdb_lines(m.fdb_before, lab):
        write(line)
    write(f"    live migration took {m.duration:.2f} s; the guest RESUMED on host {m.destination}")
    qemu_through = qemu_reaches_switch(lab)
    for vnic in lab.guest.nics:
        count = m.qemu_by_mac.get(vnic.mac, 0)
        if not qemu_through[vnic.mac]:
            fate = ("dropped at br0's ingress (nft prerouting), before br0 could learn from them" if not vnic.ovs
                    else "lost in the dead VLAN 4095 of the unwired port")
        else:
            fate = "let through: the bridge learned the guest's MAC on its tap from them, and passed them on"
        write(f"    QEMU sent {count} RARPs of {vnic.mac} into host {m.destination}'s {vnic.bridge} through the guest's "
              f"tap: {fate}")
    if lab.wiring == "late" and m.rewiring is not None and m.rewiring.wired_at is not None and m.resumed is not None:
        write(f"    the wiring agent moved OVS port {m.rewiring.port} from VLAN 4095 into its VLAN "
              f"{(m.rewiring.wired_at - m.resumed):.2f} s after the resume")
    if not m.frames:
        write("    frames at the switch from the destination: NONE (nobody announced)")
    else:
        first = m.first
        per_mac_index: dict[str, int] = {}
        ours_only = [mac for mac, through in qemu_through.items() if not through]
        mixed = [mac for mac, through in qemu_through.items() if through]
        # Frames are told apart by where they entered: through the guest's tap (QEMU's) or from
        # the host (ours). At the switch both have the same bytes, so only a MAC whose QEMU
        # frames were lost on the host has frames that are ours alone there.
        if ours_only:
            write(f"    our frames as the switch received them ({sum(s.mac in ours_only for s in m.frames)}), "
                  "time from our first frame:")
        for seen in sorted(m.frames, key=lambda s: s.time):
            if seen.mac not in ours_only:
                continue
            index = per_mac_index.get(seen.mac, 0)
            per_mac_index[seen.mac] = index + 1
            nominal = f"(QEMU schedule {NOMINAL_MS[index]:.0f} ms)" if index < len(NOMINAL_MS) else ""
            vlan = f"VLAN {seen.vlan:<3}" if seen.vlan else "untagged"
            write(f"      +{(seen.time - (first or seen.time)) * 1000:7.1f} ms  {seen.mac}  {vlan}  via port {seen.device:<5}"
                  f"  {len(seen.frame)} bytes {nominal}")
        for mac in mixed:
            frames = sum(s.mac == mac for s in m.frames)
            write(f"    {mac}: {frames} frames at the switch, QEMU's and ours together (identical bytes: "
                  "only the host tells them apart)")
        shape = "every frame has QEMU's exact bytes and tag" if not m.bad_frames else f"BAD FRAMES: {m.bad_frames[0]}"
        write(f"    checked with scapy: {shape}")
    write("    switch FDB after:")
    for line in _fdb_lines(m.fdb_after, lab):
        write(line)
    verdict = "MOVED to the destination's ports" if all(m.moved[k] == v for k, v in m.expected.items()) else "NOT MOVED"
    write(f"    => every MAC {verdict}" if verdict.startswith("MOVED") else f"    => {verdict}: {m.moved}")
    for nic in m.nics.values():
        state = f", {nic.bridge_state}" if nic.bridge_state else ""
        where = f"on {nic.bridge_port}{state}" if nic.bridge_port else "not in its FDB (flooded)"
        reached = f"{m.traffic_ms(nic.mac):.1f} ms after RESUMED" if nic.delivered is not None else "NEVER"
        guest_port = "the guest's port" if nic.on_guest_port else "NOT the guest's port"
        write(f"    {nic.mac} on host {m.destination}'s {nic.bridge}: {where} ({guest_port}); "
              f"client traffic reached the guest's tap {nic.tap}: {reached}")
    if m.evpn:
        from rarp_announce.lab.evpn import evpn_story

        evpn_story(m.evpn, write)
    for ip, mac in m.router.items():
        learned = f"learned {ip} -> {mac}" if mac else f"did NOT learn {ip}"
        write(f"    the router behind the switch {learned} (from our gratuitous ARP / neighbour advertisement)")
    if m.traffic_after_wiring_ms is not None:
        write(f"    OVS vNIC: traffic reached the guest {m.traffic_after_wiring_ms:.1f} ms after its port was wired")
    if m.lag_resumed_ms is not None:
        write(f"    our first frame at the switch: {m.lag_resumed_ms:+.1f} ms vs the RESUMED event (as the lab's "
              "libvirt client saw it)")
    if m.lag_qemu_resumed_ms is not None:
        write(f"    ... and {m.lag_qemu_resumed_ms:+.1f} ms after QEMU resumed the guest (its own stamp of the RESUME "
              "event, on the kernel's clock: the ordering that cannot lie)")
    if m.lag_qemu_host_ms is not None:
        write(f"    on host {m.destination}: our first frame left {m.lag_qemu_host_ms:+.1f} ms after QEMU's own first RARP")


def run_demo(migrations: int = 3, mode: str = "daemon", *, write: Write | None = None, kvm: bool | None = None,
             qemu_rarp: str = "drop", wiring: str = "late", rewire_delay: float = 2.0, fabric: str = "l2",
             timeline: str | None = None) -> int:
    """Build the lab, migrate back and forth `migrations` times telling what happens, clean up;
    with `timeline` (a folder), draw each migration there as an SVG (lab/timeline.py)."""
    def default_write(text: str) -> None:
        print(text, flush=True)

    write = write or default_write
    write(_INTRO)
    if fabric == "evpn":
        from rarp_announce.lab.evpn import EVPN_INTRO

        write(EVPN_INTRO)
    started = time.monotonic()
    steps = 5

    def step(number: int, text: str) -> None:
        write(f"[{number}/{steps}] {text}  (t={time.monotonic() - started:4.1f} s)")

    who = {"daemon": "our daemon (rarp-announce daemon) on each host, watching its libvirtd",
           "hook": "only our libvirt hook on each host (a standalone waiter per migration, no daemon)",
           "both": "our daemon on each host, and our hook handing each arrival to it",
           "cli": "the lab itself, running `rarp-announce domain` at the resume",
           "none": "nobody (control run: the guest must stay unreachable)"}[mode]
    headings = {
        "network": (1, "Building the network: a switch, a client and two hypervisor hosts (network namespaces)"),
        "libvirtd": (2, "Starting a real libvirtd on each host (the first start probes QEMU: ~8 s)"),
        "announcer": (3, f"The announcer: {who}"),
        "guest": (4, "Starting the guest on host a"),
    }
    lab = Lab(mode, kvm=kvm, narrate=lambda text: write(f"      {text}"), phase=lambda name: step(*headings[name]),
              qemu_rarp=qemu_rarp, wiring=wiring, rewire_delay=rewire_delay, fabric=fabric)  # type: ignore[arg-type]
    failures = 0
    try:
        lab.up()
        step(5, f"Live-migrating it {migrations} times between the hosts")
        for number in range(1, migrations + 1):
            write("")
            write(f"  Migration {number}/{migrations}  " + _bar(number - 1, migrations))
            m = lab.migrate()
            migration_story(m, lab, write)
            if timeline is not None:
                write(f"    timeline: {draw_timeline(m, timeline)}")
            failures += not m.ok
        write("")
        write("  " + _bar(migrations, migrations))
        _summary(lab, write)
    except KeyboardInterrupt:
        write("interrupted: cleaning up")
        failures += 1
    finally:
        write("Cleaning up: guest, libvirtds, OVS, namespaces, workdir ...")
        lab.close()
        write(f"done in {time.monotonic() - started:.1f} s; nothing left behind.")
    return 1 if failures else 0


def draw_timeline(record: Migration, folder: str) -> str:
    """The SVG of one migration in `folder`, or why there is none (matplotlib is optional)."""
    from rarp_announce.errors import AnnounceError
    from rarp_announce.lab.timeline import write_timeline

    try:
        return str(write_timeline(record, f"{folder}/migration-{record.number}.svg"))
    except (AnnounceError, OSError) as exc:
        return f"not drawn: {exc}"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def qemu_reaches_switch(lab: Lab) -> dict[str, bool]:
    """MAC -> whether QEMU's own RARPs for it could leave the destination host in this lab's mode:
    on br0 unless the nft rule drops them at ingress; on ovsbr0 unless the port is wired late."""
    return {nic.mac: (lab.wiring != "late") if nic.ovs else (lab.qemu_rarp != "drop") for nic in lab.guest.nics}


def _summary(lab: Lab, write: Write) -> None:
    ok = sum(m.ok for m in lab.migrations)
    ours_alone = not any(qemu_reaches_switch(lab).values())
    why = "because of our frames alone" if ours_alone else "(QEMU's own frames were let through too in this mode)"
    write(f"Summary: after {ok} of {len(lab.migrations)} migrations, traffic reached the guest on its new host {why}.")
    stats = summary(lab.migrations)

    def fmt(key: str) -> str:
        value = stats.get(key)
        return "n/a" if value is None else f"{value:.1f} ms"

    write(f"  our first frame after RESUMED:            median {fmt('lag_resumed_ms_median')}, max {fmt('lag_resumed_ms_max')}")
    write(f"  our first frame after QEMU's own first:   median {fmt('lag_qemu_host_ms_median')}, max {fmt('lag_qemu_host_ms_max')}"
          " (both seen on the destination host)")
    write(f"  our frames vs QEMU's 0/50/200/450/800 ms: median |offset| {fmt('offset_ms_median')}, max {fmt('offset_ms_max')}")
    write(f"  client traffic reaching the guest after RESUMED: median {fmt('traffic_ms_median')}, max {fmt('traffic_ms_max')}")
    write(f"  ... after its OVS port was wired (late):   median {fmt('traffic_after_wiring_ms_median')}, "
          f"max {fmt('traffic_after_wiring_ms_max')}")


if __name__ == "__main__":
    sys.exit(run_demo())
