"""`rarp-announce send` end to end: a switch netns with two hosts, the FDB moving, bytes on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rarp_announce.lab.netns import Topology, unique
from tests.conftest import require
from tests.test_frames import scapy_frame

CLI = [sys.executable, "-m", "rarp_announce"]
NOMINAL = [0.0, 0.05, 0.2, 0.45, 0.8]


def octets(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def decode_tag(frame: bytes) -> tuple[int | None, int]:
    """(VLAN id, PCP) as scapy decodes the frame: the independent oracle for the tag."""
    from scapy.layers.l2 import Dot1Q, Ether

    packet = Ether(frame)
    if Dot1Q in packet:
        return packet[Dot1Q].vlan, packet[Dot1Q].prio
    return None, 0


@pytest.mark.parametrize(("vlan", "priority"), [(None, 0), (100, 0), (4094, 6)])
def test_send_moves_the_mac_to_this_hosts_port(topology: Topology, vlan: int | None, priority: int) -> None:
    mac = "52:54:00:5e:01:02"
    topology.learn("a", mac)
    assert topology.fdb_port(mac) == "port_a"

    argv = [*CLI, "send", mac.upper().replace(":", "-"), "--iface", "br0", "--json"]
    if vlan is not None:
        argv += ["--vlan", str(vlan), "--priority", str(priority)]
    with topology.capture("switch", "port_b") as capture:
        result = topology.exec("b", argv)
        assert result.returncode == 0, result.stderr
        captured = capture.frames(count=5, timeout=5)

    assert topology.fdb_port(mac) == "port_b"
    expected = scapy_frame(octets(mac), vlan, priority)
    assert len(captured) == 5
    for item in captured:
        assert item.frame == expected  # byte for byte, the tag restored from PACKET_AUXDATA
        assert decode_tag(item.frame) == (vlan, priority)
    # No wall clock here: the schedule is proven by the rounds and the scheduler's own offsets
    # below (never earlier than nominal); how late frames leave is a figure in `make bench`.

    assert result.stderr == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    for record in records:
        assert {"t", "mac", "device", "vlan", "round"} <= record.keys()
        assert (record["mac"], record["device"], record["vlan"]) == (mac, "br0", vlan)
    assert_never_early([r["t"] for r in records], NOMINAL)


def assert_never_early(offsets: list[float], nominal: list[float]) -> None:
    """Each round's offset, as the engine's own loop clock read it when the round's timer fired,
    is at least its nominal offset: a timer never fires early, whatever the load (the engine's
    exact offsets are proven on a virtual clock in tests/announce/test_engine.py)."""
    assert all(seen >= wanted - 1e-6 for seen, wanted in zip(offsets, nominal, strict=True)), (offsets, nominal)


def test_several_macs_share_one_schedule_and_repeat(topology: Topology) -> None:
    macs = ["52:54:00:5e:02:01", "52:54:00:5e:02:02", "52:54:00:5e:02:03"]
    for mac in macs:
        topology.learn("a", mac)
    argv = [*CLI, "send", *macs, "--iface", "br0", "--vlan", "7", "--initial", "20", "--step", "10",
            "--rounds", "3", "--repeat", "2", "--repeat-interval", "0.1", "--json"]
    with topology.capture("switch", "port_b") as capture:
        result = topology.exec("b", argv)
        assert result.returncode == 0, result.stderr
        captured = capture.frames(count=18, timeout=5)
    assert [topology.fdb_port(mac) for mac in macs] == ["port_b"] * 3
    assert sorted(c.frame for c in captured) == sorted(scapy_frame(octets(m), 7) for m in macs for _ in range(6))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 18
    # one schedule: the three MACs of a round leave in the same moment, in the order given
    for index in range(0, 18, 3):
        group = records[index : index + 3]
        assert [r["mac"] for r in group] == macs
        assert len({r["t"] for r in group}) == 1
        assert len({(r["burst"], r["round"]) for r in group}) == 1
    assert [(records[i]["burst"], records[i]["round"]) for i in range(0, 18, 3)] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert_never_early([records[i]["t"] for i in range(0, 18, 3)], [0, 0.02, 0.05, 0.1, 0.12, 0.15])


def test_pcap_run_writes_the_frames_in_schedule_order_and_nothing_to_the_wire(topology: Topology, tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    mac = "52:54:00:5e:03:01"
    path = tmp_path / "announce.pcap"
    with topology.capture("switch", "port_b") as capture:
        result = topology.exec("b", [*CLI, "send", mac, "--iface", "br0", "--vlan", "100", "--pcap", str(path)])
        assert result.returncode == 0, result.stderr
        leaked = capture.frames(timeout=0.3)
    assert leaked == []
    # QEMU's default schedule (5 rounds over 0.8 s), from the schedule itself, not a clock.
    assert result.stdout == f"announced 1 MAC(s) to {path}: 5 frame(s) over 0.800 s\n"
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [scapy_frame(octets(mac), 100)] * 5
    stamps = [float(p.time) for p in packets]
    # One frame per round, each round's timer set when the previous one ran: in order. How
    # close the stamps come to 0/50/200/450/800 ms is a figure in benchmarks/bench_cli.py.
    assert stamps == sorted(stamps)


def test_dry_run_prints_and_sends_nothing(topology: Topology) -> None:
    mac = "52:54:00:5e:04:01"
    topology.learn("a", mac)
    with topology.capture("switch", "port_b") as capture:
        result = topology.exec("b", [*CLI, "send", mac, "--iface", "br0", "--vlan", "3", "--dry-run", "--initial", "10", "--step", "1"])
        leaked = capture.frames(timeout=0.3)
    assert result.returncode == 0, result.stderr
    assert leaked == []
    assert topology.fdb_port(mac) == "port_a"
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert all(line.startswith("dry-run +") and "br0" in line and "vlan 3" in line and mac in line for line in lines)


def test_text_output_summarises(topology: Topology) -> None:
    result = topology.exec("b", [*CLI, "send", "5254.005e.0501", "--iface", "br0", "--rounds", "2", "--initial", "1"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "announced 1 MAC(s) on br0: 2 frame(s) over 0.001 s\n"


# Bad input: each case runs inside a netns of its own, so even a validation gap sends nothing outside it.
BAD_INPUT = {
    "bad-mac": (["zz:54:00:12:34:56", "--iface", "br0"], 2, "invalid MAC 'zz:54:00:12:34:56': expected six octets as"),
    "multicast-mac": (["01:00:5e:00:00:01", "--iface", "br0"], 2, "is a multicast address"),
    "broadcast-mac": (["ff:ff:ff:ff:ff:ff", "--iface", "br0"], 2, "is the broadcast address"),
    "zero-mac": (["00:00:00:00:00:00", "--iface", "br0"], 2, "is all zeros"),
    "vlan-0": (["52:54:00:12:34:56", "--iface", "br0", "--vlan", "0"], 2, "invalid VLAN id 0: expected 1..4094"),
    "vlan-4095": (["52:54:00:12:34:56", "--iface", "br0", "--vlan", "4095"], 2, "invalid VLAN id 4095"),
    "vlan-text": (["52:54:00:12:34:56", "--iface", "br0", "--vlan", "ten"], 2, "Invalid value for '--vlan'"),
    "priority-8": (["52:54:00:12:34:56", "--iface", "br0", "--vlan", "5", "--priority", "8"], 2, "invalid priority 8"),
    "priority-no-vlan": (["52:54:00:12:34:56", "--iface", "br0", "--priority", "1"], 2, "a priority needs a VLAN"),
    "rounds-0": (["52:54:00:12:34:56", "--iface", "br0", "--rounds", "0"], 2, "invalid rounds 0: expected an integer 1..1000"),
    "step-0": (["52:54:00:12:34:56", "--iface", "br0", "--step", "0"], 2, "invalid step 0: expected an integer 1..10000 ms"),
    "initial-big": (["52:54:00:12:34:56", "--iface", "br0", "--initial", "100001"], 2, "invalid initial 100001"),
    "max-negative": (["52:54:00:12:34:56", "--iface", "br0", "--max", "-1"], 2, "invalid max -1"),
    "repeat-0": (["52:54:00:12:34:56", "--iface", "br0", "--repeat", "0"], 2, "invalid repeat 0"),
    "repeat-interval-0": (["52:54:00:12:34:56", "--iface", "br0", "--repeat-interval", "0"], 2, "invalid repeat-interval 0.0"),
    "pcap-and-dry-run": (["52:54:00:12:34:56", "--iface", "br0", "--pcap", "/tmp/x.pcap", "--dry-run"], 2,
                         "--pcap and --dry-run exclude each other"),
    "pcap-unwritable": (["52:54:00:12:34:56", "--iface", "br0", "--pcap", "/nonexistent-dir/x.pcap"], 2,
                        "cannot write pcap file '/nonexistent-dir/x.pcap': No such file or directory"),
    "no-iface": (["52:54:00:12:34:56"], 2, "Missing option '--iface'"),
    "no-mac": (["--iface", "br0"], 2, "Missing argument 'MAC'"),
    "missing-device": (["52:54:00:12:34:56", "--iface", "nosuch0"], 1, "device 'nosuch0': no such device on this host"),
    "down-device": (["52:54:00:12:34:56", "--iface", "down0"], 1, "device 'down0': device is down (ip link set dev down0 up)"),
    "guest-tap": (["52:54:00:12:34:56", "--iface", "vnet9"], 1, "device 'vnet9': is a guest's tap port"),
}


@pytest.fixture(scope="module")
def bad_input_results() -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """Every bad-input case, run at once (each is a separate process) in a netns of its own."""
    import os
    import shutil

    from pyroute2 import netns

    require(os.geteuid() == 0 and shutil.which("ip") is not None, "needs root and iproute2 for network namespaces")
    name = unique("bad")  # not a Topology: the tests' own topologies must not collide with it
    netns.create(name)
    try:
        for argv in (["ip", "link", "add", "br0", "type", "bridge"],
                     ["ip", "link", "set", "br0", "up"],
                     ["ip", "link", "add", "down0", "type", "bridge"],
                     ["ip", "tuntap", "add", "dev", "vnet9", "mode", "tap"],
                     ["ip", "link", "set", "vnet9", "master", "br0", "up"]):
            made = subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, timeout=30)
            assert made.returncode == 0, made.stderr
        running = {
            case: subprocess.Popen(["ip", "netns", "exec", name, *CLI, "send", *argv],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for case, (argv, _code, _message) in BAD_INPUT.items()
        }
        results = {}
        for case, process in running.items():
            try:
                out, err = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            results[case] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        yield results
    finally:
        netns.remove(name)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_its_exit_code(bad_input_results: dict[str, subprocess.CompletedProcess], case: str) -> None:
    _argv, code, message = BAD_INPUT[case]
    result = bad_input_results[case]
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rarp-announce: error: ")
    assert message in lines[0]


_HELP_PROBE = """
import sys
from rarp_announce.cli import app, main
import typer.main
names = sorted(typer.main.get_command(app).commands)
heavy = {}
for argv in [["--help"]] + [[name, "--help"] for name in names]:
    sys.argv = ["rarp-announce", *argv]
    try:
        main()
    except SystemExit as exit:
        assert exit.code in (0, None), (argv, exit.code)
    heavy[" ".join(argv)] = sorted(m for m in sys.modules if m.split(".")[0] in ("scapy", "libvirt", "libvirtaio", "libvirtmod"))
import json
sys.stderr.write(json.dumps({"commands": names, "heavy": heavy}) + "\\n")
"""


def test_help_loads_neither_scapy_nor_libvirt() -> None:
    result = subprocess.run([sys.executable, "-c", _HELP_PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stderr.splitlines()[-1])
    assert {"send", "sniff"} <= set(report["commands"])
    assert report["heavy"] == {argv: [] for argv in report["heavy"]}
    assert "Example" in result.stdout


def test_help_of_send_teaches_with_examples() -> None:
    result = subprocess.run([*CLI, "send", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "rarp-announce send 52:54:00:12:34:56 --iface br0 --vlan 100" in result.stdout
    for option in ("--iface", "--vlan", "--priority", "--initial", "--max", "--rounds", "--step", "--repeat",
                   "--repeat-interval", "--pcap", "--dry-run", "--json"):
        assert option in result.stdout


@pytest.mark.parametrize("mode", ["--json", "--dry-run"])
def test_a_reader_that_goes_away_stops_neither_the_frames_nor_the_exit_code(topology: Topology, mode: str) -> None:
    mac = "52:54:00:5e:06:01"
    topology.learn("a", mac)
    with topology.capture("switch", "port_b") as capture:
        process = topology.popen("b", [*CLI, "send", mac, "--iface", "br0", mode, "--initial", "20", "--step", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = process.stdout.readline()  # type: ignore[union-attr]
            process.stdout.close()  # type: ignore[union-attr]  # like `| head -1`
            err = process.stderr.read()  # type: ignore[union-attr]
            code = process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        captured = capture.frames(count=5, timeout=1 if mode == "--dry-run" else 5)
    assert mac in first
    assert (code, err) == (0, "")
    assert len(captured) == (0 if mode == "--dry-run" else 5)


def test_send_reads_the_configs_schedule_like_every_other_trigger(topology: Topology, tmp_path) -> None:
    """[schedule] sets `send`'s rounds as it sets the daemon's and `domain`'s; an option still wins."""
    config = tmp_path / "schedule.toml"
    config.write_text("[schedule]\nrounds = 2\ninitial = 10\nstep = 1\n")
    mac = "52:54:00:5e:06:01"
    from_config = topology.exec("b", [*CLI, "send", mac, "--iface", "br0", "--dry-run", "--config", str(config)])
    assert from_config.returncode == 0, from_config.stderr
    assert len(from_config.stdout.splitlines()) == 2, from_config.stdout
    overridden = topology.exec("b", [*CLI, "send", mac, "--iface", "br0", "--dry-run", "--config", str(config), "--rounds", "3"])
    assert overridden.returncode == 0, overridden.stderr
    assert len(overridden.stdout.splitlines()) == 3, overridden.stdout
