"""The lab's tiny guest: a real Linux that counts the client's frames it received itself.

The firmware guest never posts receive buffers, so QEMU never reads its tap: a frame written to
that tap says nothing about what a guest gets, and frames handed to the source's tap while the
guest is paused vanish without a trace. This guest boots Debian's cloud kernel
(linux-image-cloud-amd64) with a busybox initramfs that `make setup` builds into
`<venv>/lab-guest/` (packaging/lab-guest/). Its /init brings every vNIC up without an address,
so the guest sends nothing and only announcements move its MACs, and runs `tally`
(packaging/lab-guest/tally.c): it counts the client's frames (traffic.py) by sequence number on
each vNIC and reports gaps on the serial console, which the lab reads from a file.

It runs under TCG by default: on nested KVM without a full virtual CPU (this lab's machine),
the kernel's decompressor alone took 95 s under KVM and the kernel then stopped on an emulation
failure, while TCG boots it in 3-5 s. It gets 96 MiB (64 are too few for this kernel): about
75 MiB to copy, so QEMU's part of a migration takes about 1 s (0.75-2 s measured), libvirt's
whole migrate call 2-4 s (the firmware guest's 2.3-2.9 s) and QEMU's downtime 150-350 ms.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rarp_announce.lab.guest import DirectBoot
from rarp_announce.lab.netns import wait_until

GUEST_DIR_ENV = "RARP_LAB_GUEST_DIR"
# quiet: the console carries the tally; ipv6.disable=1: no DAD, MLD or router solicitation
# would teach a switch where the guest is; panic=-1: a broken guest stops instead of looping.
CMDLINE = "console=ttyS0 quiet ipv6.disable=1 panic=-1"
_PREFIX = "tally "


def guest_dir() -> Path:
    """Where `make setup` built the guest: $RARP_LAB_GUEST_DIR, else the venv's lab-guest/."""
    return Path(os.environ.get(GUEST_DIR_ENV) or Path(sys.prefix) / "lab-guest")


def direct_boot(serial_log: Path, memory_mib: int = 96) -> DirectBoot:
    folder = guest_dir()
    kernel, initrd = folder / "vmlinuz", folder / "initramfs.cpio.gz"
    for needed in (kernel, initrd):
        if not needed.is_file():
            raise RuntimeError(f"the tiny guest is not built ({needed} is missing): run `make setup`, which runs "
                               f"packaging/lab-guest/build-initramfs.sh, or set {GUEST_DIR_ENV}")
    return DirectBoot(str(kernel), str(initrd), CMDLINE, str(serial_log), memory_mib)


@dataclass
class _Nic:
    """What the guest's lines say about one vNIC, in the order it printed them."""

    first: int | None = None
    last: int | None = None  # highest sequence received
    gaps: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges never received (yet)
    late: list[int] = field(default_factory=list)  # arrived after a higher one: filled a gap, or a duplicate


class SerialTally:
    """Reads the tiny guest's serial console (a file both hosts' QEMUs append to)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def lines(self) -> list[list[str]]:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line[len(_PREFIX):].split() for line in text.splitlines() if line.startswith(_PREFIX)]

    def wait_ready(self, macs: list[str], timeout: float = 120.0) -> float:
        """Wait until the guest's tally listens on every vNIC; the wall-clock time it was seen."""
        deadline = time.monotonic() + timeout
        wanted = {mac.lower() for mac in macs}
        while time.monotonic() < deadline:
            for words in self.lines():
                if words[:1] == ["error"]:
                    raise RuntimeError(f"the tiny guest failed: {' '.join(words)} (console: {self.path})")
                if words[:1] == ["ready"] and wanted <= set(words[1:]):
                    return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"the tiny guest did not report ready within {timeout:.0f} s (console: {self.path})")

    def nics(self) -> dict[str, _Nic]:
        found: dict[str, _Nic] = {}
        for words in self.lines():
            if len(words) < 3 or not all(w.isdigit() for w in words[2:]):
                continue
            kind, nic, numbers = words[0], found.setdefault(words[1], _Nic()), [int(w) for w in words[2:]]
            if kind == "first":
                nic.first = numbers[0]
                nic.last = max(nic.last or 0, numbers[0])
            elif kind == "gap" and len(numbers) == 2:
                nic.gaps.append((numbers[0], numbers[1]))
                nic.last = max(nic.last or 0, numbers[1] + 1)  # the frame after the gap arrived
            elif kind == "late":
                nic.late.append(numbers[0])
            elif kind == "sum" and len(numbers) == 2 and nic.first is not None:
                nic.last = max(nic.last or 0, numbers[1])
        return found

    def _drops_reports(self) -> list[int]:
        return [int(words[1]) for words in self.lines() if len(words) == 2 and words[0] == "drops" and words[1].isdigit()]

    def socket_drops(self, timeout: float) -> int:
        """Client frames the guest's socket dropped (its queue full) on all vNICs so far: waits for
        the guest's next report (every half second), so it covers every frame the guest had
        already counted when called. Raises if none comes within `timeout`."""
        seen = len(self._drops_reports())
        if not wait_until(lambda: len(self._drops_reports()) > seen, timeout):
            raise RuntimeError(f"the tiny guest reported no drops count within {timeout:.0f} s (console: {self.path})")
        return self._drops_reports()[-1]

    def last(self, mac: str) -> int | None:
        nic = self.nics().get(mac.lower())
        return None if nic is None else nic.last

    def wait_past(self, mac: str, sequence: int, timeout: float) -> bool:
        """Wait until the guest has received a frame at or above `sequence` (False: not within timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last(mac)
            if last is not None and last >= sequence:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def missing(self, mac: str, start: int, end: int) -> set[int]:
        """Sequences in [start, end) the guest has not received on the vNIC with `mac`."""
        nic = self.nics().get(mac.lower())
        window = range(start, end)
        if nic is None or nic.first is None or nic.last is None:
            return set(window)
        lost = set(range(start, min(end, nic.first)))  # before its first frame
        for low, high in nic.gaps:
            lost.update(range(max(low, start), min(high + 1, end)))
        lost.update(range(max(nic.last + 1, start), end))  # after the highest one so far
        lost.difference_update(nic.late)
        return lost

    def received(self, mac: str, start: int, end: int) -> int:
        return (end - start) - len(self.missing(mac, start, end)) if end > start else 0
