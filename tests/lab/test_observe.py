"""observe.check_frame (scapy as the independent decoder) and Sniffer on a real topology."""

from __future__ import annotations

import time


def test_check_frame_accepts_qemus_exact_frame_and_names_what_differs():
    from rarp_announce.frames import rarp_frame
    from rarp_announce.lab.observe import check_frame
    from rarp_announce.mac import parse_mac

    mac = "52:54:00:12:34:56"
    plain = bytes.fromhex("ffffffffffff525400123456803500010800060400035254001234560000000052540012345600000000") + bytes(18)
    assert check_frame(plain, mac, None) is None
    tagged = plain[:12] + bytes.fromhex("81000064") + plain[12:]
    assert check_frame(tagged, mac, 100) is None
    assert check_frame(rarp_frame(parse_mac(mac), 100, 0), mac, 100) is None
    assert "VLAN" in check_frame(tagged, mac, None)
    assert check_frame(plain[:-1] + b"\x01", mac, None) is not None  # padding must be zero
    assert check_frame(plain, "52:54:00:12:34:57", None) is not None


def test_sniffer_sees_tagged_and_untagged_rarp_with_device_and_vlan(topology):
    from rarp_announce.frames import rarp_frame
    from rarp_announce.lab.netns import inside, learning_frame
    from rarp_announce.lab.observe import Sniffer
    import socket

    sniffer = Sniffer(topology.switch, devices=("port_a",))
    try:
        start = time.time()
        with inside(topology.ns["a"]):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        with sock:
            sock.bind(("uplink", 0))
            sock.send(rarp_frame(bytes.fromhex("525400000001"), None, 0))
            sock.send(rarp_frame(bytes.fromhex("525400000002"), 100, 0))
            sock.send(learning_frame("52:54:00:00:00:03"))  # not RARP
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(sniffer.since(start)) < 2:
            time.sleep(0.02)
        seen = sniffer.since(start)
    finally:
        sniffer.close()
    assert [(s.device, s.mac, s.vlan, len(s.frame)) for s in seen] == [
        ("port_a", "52:54:00:00:00:01", 0, 60),
        ("port_a", "52:54:00:00:00:02", 100, 64),
    ]
