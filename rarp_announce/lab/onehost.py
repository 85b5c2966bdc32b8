"""One hypervisor host, no migration: a netns with a Linux bridge br0, a real libvirtd in it
(libvirtd.py), and the lab's firmware-only guest with one vNIC on br0.

For tests that need libvirt's real QEMU driver and a running guest's live XML but not the whole
two-host lab (session.py): the address-trust attack test resolves and announces against it.
Everything it starts is stopped by pid and everything it builds removed by `close()`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rarp_announce.lab.guest import Guest, Nic, kvm_usable
from rarp_announce.lab.libvirtd import Libvirtd
from rarp_announce.lab.netns import unique
from rarp_announce.lab.teardown import kill_pid


class OneHost:
    """`OneHost(workdir, setup=[...]).up()`: `setup` are `ip` commands (without `ip -n NS`) run in
    the host's netns after br0 exists and before the guest starts."""

    def __init__(self, workdir: Path, *, setup: Sequence[str] = (), seed: int | None = None) -> None:
        rng = random.Random(seed)
        mac = "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        self.workdir = Path(workdir)
        self.setup = list(setup)
        self.ns = unique("one")
        self.guest = Guest(f"rarp-one-{self.ns}", (Nic(mac, "br0", None, False),), kvm_usable())
        self.libvirtd: Libvirtd | None = None
        self.conn: Any = None
        self._netns_made = False

    @property
    def mac(self) -> str:
        return self.guest.nics[0].mac

    @property
    def uri(self) -> str:
        assert self.libvirtd is not None
        return self.libvirtd.uri

    def up(self) -> OneHost:
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def _up(self) -> None:
        import libvirt

        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True, timeout=10)
        self._netns_made = True
        for command in ["link set lo up", "link add br0 type bridge stp_state 0 forward_delay 0", "link set br0 up",
                        *self.setup]:
            self.ip(command)
        self.libvirtd = Libvirtd(f"one-{self.ns}", self.ns, self.workdir / "libvirt")
        self.libvirtd.start()
        self.conn = libvirt.open(self.libvirtd.uri)
        self.conn.createXML(self.guest.xml(), 0)

    def ip(self, command: str) -> str:
        """`ip -n NS <command>` (split on spaces); its output, or RuntimeError with its stderr."""
        done = subprocess.run(["ip", "-n", self.ns, *command.split()], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"ip -n {self.ns} {command}: {done.stderr.strip()}")
        return done.stdout

    def close(self) -> None:
        """Stop the guest, libvirtd and anything left in the netns; remove the netns and workdir."""
        if self.conn is not None:
            try:
                for dom in self.conn.listAllDomains():
                    if dom.isActive():
                        dom.destroy()
            except Exception:  # noqa: BLE001 - tearing down: go on with the rest
                pass
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None
        if self.libvirtd is not None:
            leftovers = self.libvirtd.qemu_pids()
            self.libvirtd.stop()
            for pid in leftovers:
                kill_pid(pid)
            self.libvirtd = None
        if self._netns_made:
            done = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=10)
            for word in done.stdout.split():  # only what this host started runs in its netns
                if word.isdigit():
                    kill_pid(int(word))
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)
            self._netns_made = False
        shutil.rmtree(self.workdir / "libvirt", ignore_errors=True)

    def __enter__(self) -> OneHost:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()
