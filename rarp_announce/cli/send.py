"""`rarp-announce send` and `rarp-announce sniff`: announce MACs by hand, and watch what reaches a port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rarp_announce.cli._common import (
    DryRunOpt,
    InitialOpt,
    JsonOpt,
    MaxOpt,
    PcapOpt,
    RepeatIntervalOpt,
    RepeatOpt,
    RoundsOpt,
    StepOpt,
    app,
    ConfigOpt,
    fail,
    open_command_sink,
    run_announcement,
    schedule_from_options,
)
from rarp_announce.errors import AnnounceError, InputError

if TYPE_CHECKING:
    from rarp_announce.config import Config
    from rarp_announce.model import Target
    from rarp_announce.netdev import Link


@app.command()
def send(
    macs: Annotated[list[str], typer.Argument(metavar="MAC", help="vNIC MACs: 52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456.", show_default=False)],
    iface: Annotated[str, typer.Option("--iface", "-i", metavar="DEV", help="Host device the frames leave on (a Linux bridge or uplink, never a guest's vnetX tap); with --port, the Open vSwitch bridge.")],
    vlan: Annotated[Optional[int], typer.Option("--vlan", metavar="N", help="Tag the frames with this 802.1Q VLAN id (1..4094).")] = None,
    priority: Annotated[int, typer.Option("--priority", metavar="P", help="802.1p priority (0..7) in the tag; needs --vlan.")] = 0,
    port: Annotated[Optional[str], typer.Option("--port", metavar="PORT", help="The guest's own port on bridge --iface. Linux bridge: its FDB entry for the MAC is first pointed at PORT (dynamic), since a bridge never learns from the frames its own device sends; then the frames leave --iface. Open vSwitch: the frames are injected as if PORT sent them (OpenFlow packet-out); an access port tags them itself, so give --vlan only for a trunk port.")] = None,
    ip: Annotated[Optional[list[str]], typer.Option("--ip", metavar="ADDR", help="Also announce this IPv4 (gratuitous ARP) or IPv6 (unsolicited neighbour advertisement) address of the MAC; repeatable; one MAC only.")] = None,
    config_path: ConfigOpt = None,
    initial: InitialOpt = None,
    max_: MaxOpt = None,
    rounds: RoundsOpt = None,
    step: StepOpt = None,
    repeat: RepeatOpt = None,
    repeat_interval: RepeatIntervalOpt = None,
    pcap: PcapOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Announce MACs on a device now, on the config's [schedule] (QEMU's 0/50/200/450/800 ms by
    default), overridden by the options given here.

    All MACs share one schedule: every round sends one frame per MAC together (with --ip, the
    RARP first, then one GARP or NA per address).

    Examples:

      rarp-announce send 52:54:00:12:34:56 --iface br0 --vlan 100

      rarp-announce send 5254.0012.3456 52:54:00:ab:cd:ef --iface bond0 --repeat 3 --json

      rarp-announce send 52:54:00:12:34:56 --iface br0 --ip 192.0.2.10 --ip 2001:db8::10

      rarp-announce send 52:54:00:12:34:56 --iface br0 --port vnet0

      rarp-announce send 52:54:00:12:34:56 --iface br-int --port tap1d2e3f4a-5b

      rarp-announce send 52:54:00:12:34:56 --iface br0 --pcap /tmp/rarp.pcap
    """
    from rarp_announce.config import load_config

    try:
        config = load_config(config_path)
        targets = _manual_targets(macs, iface, vlan, priority, port, ip or [], config, offline=pcap is not None or dry_run)
        schedule = schedule_from_options(
            config.schedule,
            initial_ms=initial, max_ms=max_, rounds=rounds, step_ms=step, repeat=repeat, repeat_interval_s=repeat_interval
        )
        sink = open_command_sink(pcap, dry_run, config)
        code = run_announcement(targets, schedule, sink, as_json=json_)
    except AnnounceError as error:
        fail(error)
    raise typer.Exit(code)


def _manual_targets(macs: list[str], iface: str, vlan: int | None, priority: int, port: str | None,
                    ips: list[str], config: Config, *, offline: bool) -> list[Target]:
    """The targets `send` was asked for, refusing any that would teach a switch something false."""
    import asyncio

    from rarp_announce.frames import check_vlan
    from rarp_announce.ipaddr import parse_ip
    from rarp_announce.mac import normalize_mac
    from rarp_announce.model import Address, BridgePort, OvsPort, Target
    from rarp_announce.names import check_ifname
    from rarp_announce.netdev import links

    check_ifname(iface, "--iface")
    check_vlan(vlan, priority)
    normalized = [normalize_mac(mac) for mac in macs]
    if ips and len(normalized) != 1:
        raise InputError(f"--ip belongs to one MAC: give a single MAC with --ip (got {len(normalized)} MACs)")
    addresses = tuple(dict.fromkeys(Address(parse_ip(text), "cli") for text in ips))
    if port is not None:
        check_ifname(port, "--port")
    found = asyncio.run(links([iface] + ([port] if port is not None else [])))
    device = found.get(iface)
    if port is None:
        if not offline and _ovs_bridge(iface, device, config):
            # A frame with a guest's MAC written into an OVS bridge's own port makes OVS learn
            # the guest on the host and deliver the guest's traffic there.
            raise InputError(
                f"--iface {iface} is an Open vSwitch bridge: frames written into it make OVS learn the MAC on the "
                "host's own port; give the guest's port with --port PORT, or announce the domain (rarp-announce domain)"
            )
        return [Target(mac, iface, vlan, "manual", "", priority, addresses=addresses) for mac in normalized]
    if device is not None and device.kind == "bridge":
        if not offline:
            _check_bridge_port(iface, port, found.get(port))
        bridge_port = BridgePort(iface, port)
        return [Target(mac, iface, vlan, "manual", port, priority, addresses=addresses, bridge_port=bridge_port)
                for mac in normalized]
    ofport = None if offline else _ovsdb_port_number(iface, port, config)
    ovs = OvsPort(iface, port, ofport)
    return [Target(mac, iface, vlan, "manual", port, priority, ovs=ovs, tagged=vlan is not None,
                   vlan_source="cli", addresses=addresses) for mac in normalized]


def _ovs_bridge(iface: str, device: Link | None, config: Config) -> bool:
    """Whether --iface is an Open vSwitch bridge's own port. Netlink tells for the kernel
    datapath (kind "openvswitch"); a userspace-datapath bridge's port is a plain tap, so only
    for a tap in no Linux bridge is OVSDB asked."""
    import asyncio

    from rarp_announce.resolve.host import ovs_snapshot

    if device is None or device.master is not None or device.kind not in ("openvswitch", "tun"):
        return False
    if device.kind == "openvswitch":
        return True
    snapshot, _why = asyncio.run(ovs_snapshot(config, timeout=2.0))
    # OVSDB unreadable: nothing says it is one (the old behaviour of every release so far).
    return snapshot is not None and bool(snapshot.is_bridge(iface))


def _check_bridge_port(iface: str, port: str, link: Link | None) -> None:
    """Sending for real on a Linux bridge, --port must be one of its ports: an FDB entry on
    another device would say something false."""
    if link is None:
        raise InputError(f"--port {port}: no such device on this host (check: bridge link show master {iface})")
    if link.master != iface:
        where = f"a port of {link.master}" if link.master else "not a port of any bridge"
        raise InputError(f"--port {port} is {where}, not of Linux bridge {iface}: give the guest's tap on {iface}")


def _ovsdb_port_number(bridge: str, port: str, config: Config) -> int | None:
    """The OpenFlow number of `port` from OVSDB; None when OVSDB cannot tell (the sink then asks
    the bridge itself, cli._common.run_announcement)."""
    import asyncio

    from rarp_announce.resolve.host import ovs_snapshot

    snapshot, _why = asyncio.run(ovs_snapshot(config, timeout=1.0))
    info = snapshot.find_port(name=port) if snapshot is not None else None
    if info is None:
        return None
    if info.bridge != bridge:
        raise InputError(f"--port {port} is on OVS bridge {info.bridge}, not {bridge}: fix --iface")
    if info.ofport is None or info.ofport <= 0:
        raise AnnounceError(f"OVS port {port} has no OpenFlow port number ({info.error or 'not ready'})")
    return int(info.ofport)


@app.command()
def sniff(
    iface: Annotated[str, typer.Option("--iface", "-i", metavar="DEV", help="Device to listen on (a bridge, uplink or switch port).")],
    count: Annotated[int, typer.Option("--count", "-c", metavar="N", help="Stop after N announcement frames (0: no limit).", min=0)] = 0,
    timeout: Annotated[Optional[float], typer.Option("--timeout", "-t", metavar="S", help="Stop after S seconds.", min=0)] = None,
    types: Annotated[Optional[list[str]], typer.Option("--type", metavar="TYPE", help="rarp (default), garp or na; repeatable. garp: gratuitous ARP (IPv4), na: unsolicited neighbour advertisement (IPv6).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Print each announcement seen on a device, tagged or not, and whether it has the exact shape.

    RARP by default (QEMU's frame); with --type garp / --type na the gratuitous ARPs and
    unsolicited neighbour advertisements too, each with its IP address. Use it to check what
    reaches a port. Exit 1 when --count frames did not arrive in time.

    Examples:

      rarp-announce sniff --iface br0 --count 5 --timeout 10

      rarp-announce sniff --iface br0 --type rarp --type garp --type na --json
    """
    from rarp_announce.sniff import sniff_rarp

    try:
        chosen = tuple(types or ["rarp"])
        for kind in chosen:
            if kind not in ("rarp", "garp", "na"):
                raise InputError(f"invalid --type {kind[:20]!r}: expected rarp, garp or na")
        seen = sniff_rarp(iface, count=count, timeout=timeout, as_json=json_, kinds=chosen)
    except AnnounceError as error:
        fail(error)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    if count and seen < count:
        typer.echo(f"rarp-announce: error: saw {seen} of {count} frame(s) on {iface} before the timeout", err=True)
        raise typer.Exit(1)
