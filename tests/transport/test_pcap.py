"""The pcap sink: read back by scapy and tcpdump, stamped when each frame was written."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rarp_announce.frames import rarp_frame
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import Target
from rarp_announce.transport.pcap import PcapSink
from tests.conftest import require

MAC = bytes.fromhex("525400123456")
BR0 = Target("52:54:00:12:34:56", "br0")


def test_the_file_is_read_back_by_scapy_and_tcpdump(tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    path = tmp_path / "out.pcap"
    frames = [rarp_frame(MAC), rarp_frame(MAC, 100, 5), rarp_frame(bytes.fromhex("5254000000ff"), 4094)]
    before = time.time()
    sink = PcapSink(str(path))
    asyncio.run(sink.prepare(BR0, frames))
    for frame in frames:
        sink.send(BR0, frame)
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


def test_an_unwritable_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        PcapSink(str(tmp_path / "missing" / "out.pcap"))
    assert str(caught.value) == f"cannot write pcap file '{tmp_path}/missing/out.pcap': No such file or directory"
    with pytest.raises(InputError, match="Is a directory"):
        PcapSink(str(tmp_path))
    with pytest.raises(InputError, match="--pcap needs a file name"):
        PcapSink("")
    with pytest.raises(AnnounceError, match="No space left on device") as full:
        PcapSink("/dev/full")  # a full disk is not the operator's path: the run failed (exit 1)
    assert not isinstance(full.value, InputError)
