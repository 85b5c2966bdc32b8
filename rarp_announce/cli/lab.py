"""`rarp-announce lab up|migrate|down|demo`: the real two-host live-migration lab (root only)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from rarp_announce.cli._common import app, fail
from rarp_announce.errors import AnnounceError, InputError

lab_app = typer.Typer(
    name="lab",
    help=(
        "A real two-host live-migration lab on this machine: a 'physical switch' (a Linux bridge, "
        "learning per frame in the kernel), two hypervisor hosts (network namespaces, each with its own libvirtd, Linux "
        "bridge and OVS bridge), a client sending to the guest, a guest with two vNICs, and our "
        "announcer. QEMU's own RARPs are lost (dropped on the Linux bridge, and on OVS the port is "
        "wired late, from the dead VLAN 4095), so the guest is reachable again only because of our "
        "frames.\n\n"
        "Examples:\n\n"
        "  rarp-announce lab demo                 # the whole story, then clean up\n\n"
        "  rarp-announce lab up --mode hook       # build it and leave it running\n\n"
        "  rarp-announce lab migrate --count 4    # migrate back and forth, check the switch\n\n"
        "  rarp-announce lab down                 # remove everything it made"
    ),
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")

ModeOpt = Annotated[str, typer.Option("--mode", help="Who announces: daemon (rarp-announce daemon per host), hook (only the libvirt hook), both (daemon + hook hand-off), cli (the lab runs `rarp-announce domain`), none (control: nothing moves).")]
TcgOpt = Annotated[bool, typer.Option("--tcg", help="Use TCG even when /dev/kvm works.")]
QemuRarpOpt = Annotated[str, typer.Option("--qemu-rarp", help="drop: QEMU's own RARPs are dropped where they enter the Linux bridge, before it learns from them (an unwired port); keep: they pass (both announcers at work).")]
WiringOpt = Annotated[str, typer.Option("--wiring", help="late: the OVS port is plugged dead (VLAN 4095) and wired --rewire-delay s after the resume, as in OpenStack; immediate: plugged wired, its VLAN in the domain XML as on a plain libvirt host.")]
DelayOpt = Annotated[float, typer.Option("--rewire-delay", help="Seconds after the resume at which a late port is wired.", min=0.0, max=60.0)]
FabricOpt = Annotated[str, typer.Option("--fabric", help="l2: br0 reaches the client through the switch; evpn: both hosts are EVPN-VXLAN VTEPs (FRR zebra + bgpd each, iBGP l2vpn evpn) and the client sits behind a third VTEP, so the fabric's type-2 routes must follow the guest (needs Debian's frr: make setup).")]
GuestOpt = Annotated[str, typer.Option("--guest", help="firmware: a guest with no OS (64 MiB, KVM); tiny: a real tiny Linux (TCG) that counts the client's frames it receives on its serial console (built by `make setup`).")]


def _check_mode(mode: str, qemu_rarp: str = "drop", wiring: str = "late") -> None:
    from rarp_announce.lab.session import MODES

    if mode not in MODES:
        raise InputError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if qemu_rarp not in ("drop", "keep"):
        raise InputError(f"--qemu-rarp {qemu_rarp!r}: expected drop or keep")
    if wiring not in ("late", "immediate"):
        raise InputError(f"--wiring {wiring!r}: expected late or immediate")


def _check_fabric(fabric: str) -> None:
    if fabric not in ("l2", "evpn"):
        raise InputError(f"--fabric {fabric!r}: expected l2 or evpn")
    if fabric == "evpn":
        from rarp_announce.lab.frr import frr_missing

        why = frr_missing()
        if why:
            raise AnnounceError(why)


def _check_root() -> None:
    if os.geteuid() != 0:
        raise AnnounceError("the lab needs root (network namespaces, libvirtd, raw sockets): run it with sudo")


def _say(text: str) -> None:
    typer.echo(text)


@lab_app.command()
def up(mode: ModeOpt = "daemon", tcg: TcgOpt = False, qemu_rarp: QemuRarpOpt = "drop", wiring: WiringOpt = "late",
       rewire_delay: DelayOpt = 2.0, guest: GuestOpt = "firmware", fabric: FabricOpt = "l2") -> None:
    """Build the lab and leave it running (state in /tmp/rarp-announce-lab.json).

    Example: rarp-announce lab up --mode daemon && rarp-announce lab migrate
    """
    from rarp_announce.lab.session import STATE_FILE, Lab
    from rarp_announce.lab.teardown import interrupt_as_exception

    interrupt_as_exception()
    try:
        _check_mode(mode, qemu_rarp, wiring)
        if guest not in ("firmware", "tiny"):
            raise InputError(f"--guest {guest!r}: expected firmware or tiny")
        _check_fabric(fabric)
        _check_root()
        if STATE_FILE.exists():
            raise AnnounceError(f"a lab is already up ({STATE_FILE}): run `rarp-announce lab down` first")
        lab = Lab(mode, kvm=False if tcg else None, narrate=_say, qemu_rarp=qemu_rarp,  # type: ignore[arg-type]
                  wiring=wiring, rewire_delay=rewire_delay, guest=guest, fabric=fabric)  # type: ignore[arg-type]
        lab.up()
        lab.save()
    except AnnounceError as error:
        fail(error)
    except (OSError, RuntimeError) as error:
        fail(AnnounceError(f"lab up failed: {error}"))
    except KeyboardInterrupt:
        typer.echo("interrupted: everything made so far was removed", err=True)
        raise typer.Exit(130)
    typer.echo(f"lab is up (mode {mode}); guest {lab.guest.name} on host a. Next: rarp-announce lab migrate")


@lab_app.command()
def migrate(count: Annotated[int, typer.Option("--count", "-n", help="Migrations, alternating direction.", min=1, max=1000)] = 1,
            timeline: Annotated[Optional[str], typer.Option("--timeline", metavar="DIR", help="Draw each migration as an SVG timeline in DIR (needs the plot extra).")] = None) -> None:
    """Live-migrate the guest to the other host COUNT times; check the switch FDB and our frames.

    Exit 1 when a migration did not move every MAC to the destination's switch port.

    Example: rarp-announce lab migrate --count 4 --timeline /tmp/timelines
    """
    from rarp_announce.lab.demo import draw_timeline, migration_story
    from rarp_announce.lab.session import STATE_FILE, Lab
    from rarp_announce.lab.teardown import interrupt_as_exception

    interrupt_as_exception()
    failed = 0
    try:
        _check_root()
        if not STATE_FILE.exists():
            raise AnnounceError("no lab is up: run `rarp-announce lab up` first")
        lab = Lab.load(narrate=_say)
        lab.observe()
        try:
            for _ in range(count):
                record = lab.migrate()
                migration_story(record, lab, _say)
                if timeline is not None:
                    _say(f"    timeline: {draw_timeline(record, timeline)}")
                failed += not record.ok
        finally:
            lab.save()
    except AnnounceError as error:
        fail(error)
    except (OSError, RuntimeError) as error:
        fail(AnnounceError(f"lab migrate failed: {error}"))
    except KeyboardInterrupt:
        typer.echo("interrupted: the lab stays up (rarp-announce lab down removes it)", err=True)
        raise typer.Exit(130)
    raise typer.Exit(1 if failed else 0)


@lab_app.command()
def down() -> None:
    """Stop and remove everything `lab up` made: guest, libvirtds, daemons, OVS, netns, workdir.

    Example: rarp-announce lab down
    """
    from rarp_announce.lab.session import STATE_FILE, Lab

    try:
        _check_root()
        if not STATE_FILE.exists():
            typer.echo("no lab is up: nothing to remove")
            return
        lab = Lab.load(narrate=_say)
        lab.close()
        STATE_FILE.unlink()
    except AnnounceError as error:
        fail(error)
    typer.echo("lab removed")


@lab_app.command()
def demo(
    migrations: Annotated[int, typer.Option("--migrations", "-n", help="How many migrations.", min=1, max=100)] = 3,
    mode: ModeOpt = "daemon",
    tcg: TcgOpt = False,
    qemu_rarp: QemuRarpOpt = "drop",
    wiring: WiringOpt = "late",
    rewire_delay: DelayOpt = 2.0,
    fabric: FabricOpt = "l2",
    timeline: Annotated[Optional[str], typer.Option("--timeline", metavar="DIR", help="Draw each migration as an SVG timeline in DIR (client frames sent, delivered, lost; RESUMED, QEMU's frames, ours, the FDB write, the wiring). Needs the plot extra: pip install 'rarp-announce[plot]'.")] = None,
) -> None:
    """Build the lab, migrate a few times telling what happens and why, then clean up.

    Example: rarp-announce lab demo --migrations 4 --mode hook --timeline /tmp/timelines
    """
    from rarp_announce.lab.demo import run_demo
    from rarp_announce.lab.teardown import interrupt_as_exception

    try:
        _check_mode(mode, qemu_rarp, wiring)
        _check_fabric(fabric)
        _check_root()
    except AnnounceError as error:
        fail(error)
    interrupt_as_exception()
    try:
        code = run_demo(migrations, mode, kvm=False if tcg else None, qemu_rarp=qemu_rarp, wiring=wiring,
                        rewire_delay=rewire_delay, fabric=fabric, timeline=timeline)
    except (AnnounceError, OSError, RuntimeError) as error:
        fail(AnnounceError(f"lab demo failed: {error}"))
    raise typer.Exit(code)
