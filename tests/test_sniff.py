"""`sniff`: decoding RARP frames and telling QEMU's exact shape from anything else."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding

from rarp_announce.frames import rarp_frame
from rarp_announce.lab.netns import Topology, inside
from rarp_announce.sniff import SeenFrame, _print, decode

MAC = bytes.fromhex("525400123456")
CLI = [sys.executable, "-m", "rarp_announce"]


def not_qemu(**arp_fields: object) -> bytes:
    """A RARP frame QEMU never sends: the given ARP fields differ from QEMU's."""
    fields = {"hwtype": 1, "ptype": 0x0800, "hwlen": 6, "plen": 4, "op": 3, "hwsrc": "52:54:00:12:34:56",
              "psrc": "0.0.0.0", "hwdst": "52:54:00:12:34:56", "pdst": "0.0.0.0"}
    fields.update(arp_fields)
    packet = Ether(dst="ff:ff:ff:ff:ff:ff", src="52:54:00:12:34:56", type=0x8035) / ARP(**fields)
    return bytes(packet / Padding(load=bytes(60 - len(packet))))


def test_our_frames_are_qemus_shape() -> None:
    seen = decode(rarp_frame(MAC), 12.5)
    assert seen == SeenFrame(12.5, "52:54:00:12:34:56", None, 0, 3, True, 60, rarp_frame(MAC))
    tagged = decode(rarp_frame(MAC, 100, 5))
    assert tagged is not None
    assert (tagged.vlan, tagged.priority, tagged.opcode, tagged.qemu_shape, tagged.length) == (100, 5, 3, True, 64)


def test_trailing_zeros_from_a_nic_keep_the_shape() -> None:
    seen = decode(rarp_frame(MAC) + bytes(4))
    assert seen is not None and seen.qemu_shape


@pytest.mark.parametrize(
    "raw",
    [
        not_qemu(op=4),  # a reply
        not_qemu(psrc="10.0.0.1"),  # QEMU leaves both IPs 0.0.0.0
        not_qemu(hwdst="52:54:00:00:00:01"),
        rarp_frame(MAC)[:42],  # not padded to 60
        rarp_frame(MAC)[:59] + b"\x01",  # non-zero padding
        b"\x52\x54\x00\x00\x00\x01" + rarp_frame(MAC)[6:],  # unicast destination
    ],
    ids=["reply", "sender-ip", "target-mac", "short", "padding", "unicast"],
)
def test_other_rarp_frames_are_not_qemus_shape(raw: bytes) -> None:
    seen = decode(raw)
    assert seen is not None
    assert seen.qemu_shape is False


def test_non_rarp_frames_are_ignored() -> None:
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src="52:54:00:12:34:56", type=0x0806) / ARP(op=1, hwsrc="52:54:00:12:34:56", psrc="10.0.0.1", pdst="10.0.0.2")
    assert decode(bytes(arp)) is None
    assert decode(bytes(Ether(src="52:54:00:12:34:56", type=0x88B5) / Padding(load=bytes(46)))) is None
    assert decode(bytes(Ether(src="52:54:00:12:34:56") / Dot1Q(vlan=5, type=0x0806) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))) is None


def test_text_line_names_the_shape(capsys: pytest.CaptureFixture[str]) -> None:
    _print(decode(rarp_frame(MAC, 7), 100.25), 100.0, False)  # type: ignore[arg-type]
    _print(decode(not_qemu(op=4), 100.5), 100.0, False)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "+   0.250s  52:54:00:12:34:56  vlan 7     op 3  64 bytes  QEMU shape",
        "+   0.500s  52:54:00:12:34:56  vlan -     op 4  60 bytes  NOT QEMU's shape",
    ]


def _wait_for_packet_socket(pid: int, baseline: int, timeout: float = 120.0) -> None:
    # /proc/PID/net is the netns of PID: a new packet socket there means sniff is listening.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/net/packet") as table:
            if len(table.readlines()) > baseline:
                return
        time.sleep(0.05)
    raise AssertionError("sniff did not open its packet socket in time")


def test_sniff_sees_sends_frames_and_a_hand_made_rarp(topology: Topology) -> None:
    mac = "52:54:00:5e:00:aa"
    sniff = topology.popen(
        "switch", [*CLI, "sniff", "--iface", "port_b", "--count", "6", "--timeout", "180", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for_packet_socket(sniff.pid, baseline=1)
        sent = topology.exec("b", [*CLI, "send", mac, "--iface", "br0", "--vlan", "100", "--priority", "2",
                                   "--initial", "10", "--step", "1", "--json"])
        assert sent.returncode == 0, sent.stderr
        handmade = not_qemu(op=4, hwsrc=mac, hwdst=mac)
        handmade = handmade[:6] + bytes.fromhex(mac.replace(":", "")) + handmade[12:]
        with inside(topology.ns["b"]):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind(("uplink", 0))
            sock.send(handmade)
        finally:
            sock.close()
        out, err = sniff.communicate(timeout=180)  # bounded generously (start-up under load); it ends at 6 frames
    finally:
        if sniff.poll() is None:
            sniff.kill()
            sniff.wait()
    assert sniff.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 6
    for record in records[:5]:
        assert record | {"time": 0} == {"time": 0, "mac": mac, "vlan": 100, "priority": 2, "opcode": 3,
                                       "qemu_shape": True, "length": 64}
    assert records[5] | {"time": 0} == {"time": 0, "mac": mac, "vlan": None, "priority": 0, "opcode": 4,
                                       "qemu_shape": False, "length": 60}
    times = [r["time"] for r in records]
    assert times == sorted(times)


def test_sniff_gives_up_after_its_timeout_with_exit_1(topology: Topology) -> None:
    result = topology.exec("switch", [*CLI, "sniff", "--iface", "port_a", "--count", "1", "--timeout", "0.2"])
    assert result.returncode == 1
    assert result.stderr == "rarp-announce: error: saw 0 of 1 frame(s) on port_a before the timeout\n"


def test_sniff_on_a_missing_device_is_one_line_exit_1(topology: Topology) -> None:
    result = topology.exec("switch", [*CLI, "sniff", "--iface", "nosuch0", "--timeout", "1"])
    assert result.returncode == 1
    assert result.stderr == "rarp-announce: error: device 'nosuch0': no such device on this host\n"
    assert result.stdout == ""
