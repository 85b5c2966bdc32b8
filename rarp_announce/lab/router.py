"""A Linux router in a netns of its own that learns guests' addresses from GARPs and NAs.

The kernel's own switches (Documentation/networking/ip-sysctl.rst), verified here: on the router's device, `arp_accept=1` takes
unsolicited ARP, `accept_untracked_na=1` takes unsolicited neighbour advertisements, and
`forwarding=1` makes it a router, without which the kernel ignores an untracked NA. An entry
`IP lladdr MAC` in its neighbour table is then the proof that an announcement was right on
the wire: the kernel checks the ARP fields, the ICMPv6 checksum and the hop limit.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def _ip(*argv: str) -> str:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def supported() -> bool:
    """accept_untracked_na exists since Linux 5.18."""
    return os.path.exists("/proc/sys/net/ipv6/conf/all/accept_untracked_na")


@dataclass
class Router:
    """The router in netns `ns`, on `device` (already there), with an address in each subnet."""

    ns: str
    device: str
    addresses: tuple[str, ...] = ("192.0.2.1/24", "2001:db8:1::1/64")

    def setup(self) -> Router:
        from rarp_announce.lab.netns import inside

        with inside(self.ns):
            for path in (
                f"/proc/sys/net/ipv4/conf/{self.device}/arp_accept",
                f"/proc/sys/net/ipv6/conf/{self.device}/accept_untracked_na",
                f"/proc/sys/net/ipv6/conf/{self.device}/forwarding",
            ):
                with open(path, "w") as knob:
                    knob.write("1")
            # No duplicate address detection on a lab link: addresses usable at once.
            with open(f"/proc/sys/net/ipv6/conf/{self.device}/accept_dad", "w") as knob:
                knob.write("0")
        for address in self.addresses:
            family = ["-6"] if ":" in address else []
            # nodad: usable at once instead of tentative for a second or so
            _ip("-n", self.ns, *family, "addr", "add", address, "dev", self.device, *(["nodad"] if family else []))
        _ip("-n", self.ns, "link", "set", self.device, "up")
        # Until its own link-local address has passed duplicate address detection, the kernel
        # does not take neighbour advertisements on the device (RFC 4862 5.4): wait, bounded.
        from rarp_announce.lab.netns import wait_until

        wait_until(lambda: not _ip("-n", self.ns, "-6", "addr", "show", "dev", self.device, "tentative").strip(), 5.0, 0.02)
        return self

    def neighbours(self) -> dict[str, tuple[str, str]]:
        """{IP: (lladdr, state)} of the neighbour table on the device, as `ip neigh` shows it."""
        table: dict[str, tuple[str, str]] = {}
        for line in _ip("-n", self.ns, "neigh", "show", "dev", self.device).splitlines():
            words = line.split()
            if len(words) >= 4 and words[1] == "lladdr":
                table[words[0]] = (words[2].lower(), words[-1])
        return table

    def learned(self, ip: str, mac: str) -> bool:
        return self.neighbours().get(ip, ("", ""))[0] == mac.lower()

    def forget(self) -> None:
        """Flush what it learned, so the next entry can only come from the next announcement."""
        _ip("-n", self.ns, "neigh", "flush", "dev", self.device)
