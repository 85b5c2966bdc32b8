"""`rarp-announce send MAC --ip ...` end to end: a Linux router learns IPv4 and IPv6 neighbours from
the command's frames (arp_accept, accept_untracked_na: the kernel's ip-sysctl.rst), `sniff
--type` decodes them, bad addresses are one line."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from rarp_announce.lab.netns import wait_until
from rarp_announce.lab.router import Router
from tests.conftest import CLI

MAC = "52:54:00:1b:00:01"


def test_send_with_addresses_teaches_a_router_both_families(router: tuple[Router, str]) -> None:
    rt, host = router
    sniffed: dict[str, subprocess.CompletedProcess] = {}

    def sniff() -> None:
        sniffed["out"] = subprocess.run(
            ["ip", "netns", "exec", rt.ns, *CLI, "sniff", "--iface", "r0", "--type", "rarp", "--type", "garp",
             "--type", "na", "--count", "6", "--timeout", "10", "--json"], capture_output=True, text=True, timeout=30)

    watcher = threading.Thread(target=sniff)
    watcher.start()
    # The sniffer's own start-up (it imports scapy) must be over before the frames leave: wait
    # until its packet socket exists in the router's netns (/proc/net/packet lists it).
    assert wait_until(lambda: len(subprocess.run(["ip", "netns", "exec", rt.ns, "cat", "/proc/net/packet"],
                                                 capture_output=True, text=True).stdout.splitlines()) > 1, 20)
    done = subprocess.run(["ip", "netns", "exec", host, *CLI, "send", MAC, "--iface", "h0", "--ip", "192.0.2.10",
                           "--ip", "2001:DB8:1::10", "--rounds", "2", "--initial", "10", "--json"],
                          capture_output=True, text=True, timeout=30)
    watcher.join(35)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    # RARP first, then one GARP and one NA, in each of the two rounds
    assert [(r["round"], r["type"], r.get("ip")) for r in records] == [
        (1, "rarp", None), (1, "garp", "192.0.2.10"), (1, "na", "2001:db8:1::10"),
        (2, "rarp", None), (2, "garp", "192.0.2.10"), (2, "na", "2001:db8:1::10"),
    ]
    assert wait_until(lambda: rt.learned("192.0.2.10", MAC) and rt.learned("2001:db8:1::10", MAC), 5), rt.neighbours()
    seen = [json.loads(line) for line in sniffed["out"].stdout.splitlines()]
    assert {(s["type"], s.get("ip"), s["qemu_shape"]) for s in seen} == {
        ("rarp", None, True), ("garp", "192.0.2.10", True), ("na", "2001:db8:1::10", True)}


@pytest.mark.parametrize("argv, message", [
    (["--ip", "127.0.0.1"], "loopback"),
    (["--ip", "224.0.0.1"], "multicast"),
    (["--ip", "::"], "unspecified"),
    (["--ip", "255.255.255.255"], "broadcast"),
    (["--ip", "10.0.0.0/8"], "10.0.0.0/8"),
    (["--ip", "not-an-ip"], "not-an-ip"),
])
def test_a_bad_address_is_one_line(argv: list[str], message: str) -> None:
    done = subprocess.run([*CLI, "send", MAC, "--iface", "lo", "--dry-run", *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_addresses_belong_to_one_mac() -> None:
    done = subprocess.run([*CLI, "send", MAC, "52:54:00:1b:00:02", "--iface", "lo", "--dry-run", "--ip", "192.0.2.1"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "rarp-announce: error: --ip belongs to one MAC: give a single MAC with --ip (got 2 MACs)\n"


def test_dry_run_shows_each_frame_with_its_address() -> None:
    done = subprocess.run([*CLI, "send", MAC, "--iface", "lo", "--dry-run", "--rounds", "1", "--ip", "192.0.2.1",
                           "--ip", "fe80::1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split("  ")[-2].strip() for line in lines] == ["rarp", "garp 192.0.2.1", "na fe80::1"]
