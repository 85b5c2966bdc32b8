"""Sinks on real devices: a veth pair in a netns this test makes, read back on the peer."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rarp_announce.errors import DeviceError, InputError
from rarp_announce.frames import rarp_frame
from rarp_announce.lab.netns import Capture, inside
from rarp_announce.transport import DryRunSink, PcapSink, RawSocketSink, device_state
from tests.conftest import require

MAC = bytes.fromhex("525400123456")



def ns_run(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)


def test_raw_socket_sink_reuses_one_socket_per_device(veth: str) -> None:
    frames = [rarp_frame(MAC), rarp_frame(MAC, 100, 3)]
    with Capture(veth, "rx") as capture, inside(veth):
        sink = RawSocketSink()
        try:
            sink.prepare("tx")
            fd = sink._sockets["tx"].fileno()
            open_fds = len(os.listdir("/proc/self/fd"))
            for _ in range(10):
                for frame in frames:
                    sink.send("tx", frame)
            sink.prepare("tx")  # preparing again keeps the open socket
            assert sink._sockets["tx"].fileno() == fd
            assert sink.devices == ["tx"]
            assert len(os.listdir("/proc/self/fd")) == open_fds
        finally:
            sink.close()
        assert sink.devices == []
        got = capture.frames(count=20, timeout=3)
    assert [c.frame for c in got] == frames * 10


def test_raw_socket_sink_opens_on_first_send_without_prepare(veth: str) -> None:
    with Capture(veth, "rx") as capture, inside(veth):
        sink = RawSocketSink()
        try:
            sink.send("tx", rarp_frame(MAC))
            assert sink.devices == ["tx"]
        finally:
            sink.close()
        assert [c.frame for c in capture.frames(count=1, timeout=3)] == [rarp_frame(MAC)]


def test_missing_device_is_named(veth: str) -> None:
    with inside(veth):
        sink = RawSocketSink()
        with pytest.raises(DeviceError) as caught:
            sink.prepare("nosuch0")
        assert device_state("nosuch0") == "no such device on this host"
    assert caught.value.device == "nosuch0"
    assert str(caught.value) == "device 'nosuch0': no such device on this host"
    assert sink.devices == []


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b"])
def test_impossible_interface_name_is_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="not a valid interface name"):
        RawSocketSink().prepare(name)


def test_down_device_is_named_before_and_after_opening(veth: str) -> None:
    from pyroute2 import NetNS

    with NetNS(veth) as ns:
        ns.link("set", ifname="tx", state="down")
    with inside(veth):
        sink = RawSocketSink()
        with pytest.raises(DeviceError) as caught:
            sink.prepare("tx")
    assert str(caught.value) == "device 'tx': device is down (ip link set dev tx up)"

    with NetNS(veth) as ns:
        ns.link("set", ifname="tx", state="up")
    with inside(veth):
        sink.prepare("tx")
    with NetNS(veth) as ns:
        ns.link("set", ifname="tx", state="down")
    try:
        with pytest.raises(DeviceError) as caught:
            sink.send("tx", rarp_frame(MAC))
        assert caught.value.device == "tx"
        assert caught.value.reason == "device is down"
        assert sink.devices == []  # a failed socket is dropped, the next send opens afresh
    finally:
        sink.close()


def test_deleted_device_is_named(veth: str) -> None:
    from pyroute2 import NetNS

    with inside(veth):
        sink = RawSocketSink()
        sink.prepare("tx")
    with NetNS(veth) as ns:
        ns.link("del", ifname="tx")
    try:
        with pytest.raises(DeviceError) as caught:
            sink.send("tx", rarp_frame(MAC))
        assert caught.value.device == "tx"
    finally:
        sink.close()


def test_guest_tap_is_refused(veth: str) -> None:
    # Through `ip netns exec`, which mounts this netns's own /sys, as the daemon sees its host.
    for argv in (
        ["ip", "link", "add", "brg", "type", "bridge"],
        ["ip", "tuntap", "add", "dev", "vnet7", "mode", "tap"],
        ["ip", "link", "set", "vnet7", "master", "brg"],
        ["ip", "link", "set", "vnet7", "up"],
        ["ip", "link", "set", "brg", "up"],
        ["ip", "tuntap", "add", "dev", "loose7", "mode", "tap"],
        ["ip", "link", "set", "loose7", "up"],
    ):
        result = ns_run(veth, *argv)
        assert result.returncode == 0, result.stderr
    probe = (
        "from rarp_announce.transport import RawSocketSink\n"
        "from rarp_announce.errors import DeviceError\n"
        "sink = RawSocketSink()\n"
        "for dev in ('vnet7', 'loose7', 'brg'):\n"
        "    try:\n"
        "        sink.prepare(dev); print(dev, 'ok')\n"
        "    except DeviceError as e:\n"
        "        print(dev, e)\n"
    )
    result = ns_run(veth, sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "vnet7 device 'vnet7': is a guest's tap port: frames written there reach the guest, "
        "not the switch; announce on its bridge instead"
    )
    # A tap in no bridge is no guest's port by itself (an `ethernet` uplink set up by hand).
    assert lines[1] == "loose7 ok"
    assert lines[2] == "brg ok"


def test_pcap_sink_is_read_back_by_scapy_and_tcpdump(tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    path = tmp_path / "out.pcap"
    frames = [rarp_frame(MAC), rarp_frame(MAC, 100, 5), rarp_frame(bytes.fromhex("5254000000ff"), 4094)]
    before = time.time()
    sink = PcapSink(str(path))
    sink.prepare("any")
    for frame in frames:
        sink.send("br0", frame)
        time.sleep(0.01)
    sink.close()
    after = time.time()

    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == frames
    stamps = [float(p.time) for p in packets]
    assert before <= stamps[0] and stamps[-1] <= after
    assert all(b - a >= 0.009 for a, b in zip(stamps, stamps[1:]))

    require(shutil.which("tcpdump") is not None, "needs tcpdump")
    result = subprocess.run(["tcpdump", "-r", str(path), "-tt", "-nn", "-e", "-x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if not line.startswith("\t")]
    assert len(headers) == 3
    assert [float(line.split()[0]) for line in headers] == pytest.approx(stamps, abs=1e-6)
    assert "52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff, ethertype Reverse ARP (0x8035), length 60" in headers[0]
    assert "ethertype 802.1Q (0x8100), length 64: vlan 100, p 5, ethertype Reverse ARP (0x8035)" in headers[1]
    assert "vlan 4094, p 0" in headers[2]
    assert all("Reverse Request who-is 52:54:00" in line for line in headers)


def test_pcap_sink_on_an_unwritable_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        PcapSink(str(tmp_path / "missing" / "out.pcap"))
    assert str(caught.value) == f"cannot write pcap file '{tmp_path}/missing/out.pcap': No such file or directory"
    with pytest.raises(InputError, match="Is a directory"):
        PcapSink(str(tmp_path))


def test_dry_run_sink_prints_and_sends_nothing() -> None:
    out = io.StringIO()
    sink = DryRunSink(out)
    sink.prepare("nosuch0")  # no device needed: nothing leaves
    sink.send("nosuch0", rarp_frame(MAC))
    time.sleep(0.02)
    sink.send("br-ex", rarp_frame(bytes.fromhex("5254000000ff"), 42))
    sink.close()
    lines = out.getvalue().splitlines()
    pattern = re.compile(r"^dry-run \+\s*(\d+\.\d{3})s  (\S+)\s+vlan (\S+)\s+(\S+)  (\d+) bytes \(not sent\)$")
    first, second = (pattern.match(line) for line in lines)
    assert first and second, lines
    assert first.groups() == ("0.000", "nosuch0", "-", "52:54:00:12:34:56", "60")
    assert second.group(2, 3, 4, 5) == ("br-ex", "42", "52:54:00:00:00:ff", "64")
    assert 0.015 <= float(second.group(1)) < 1.0


def test_emit_line_survives_a_reader_that_went_away() -> None:
    from rarp_announce.transport import emit_line

    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        assert emit_line(stream, "first") is True
        assert os.read(read_end, 100) == b"first\n"
        os.close(read_end)  # like `| head -1` exiting
        assert emit_line(stream, "second") is False
        # the descriptor now points at /dev/null: later writes and the final flush succeed
        assert emit_line(stream, "third") is True
        assert os.readlink(f"/proc/self/fd/{stream.fileno()}") == "/dev/null"
    finally:
        stream.close()
