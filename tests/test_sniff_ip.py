"""`sniff` for IP announcements: GARP and unsolicited NA decoded, and every way one can differ
from the announced shape (RFC 5227 2.3, RFC 4861 7.2.6) reported with why; RARP unchanged."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    IPv6,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding, Raw

from rarp_announce.frames import garp_frame, na_frame, rarp_frame
from rarp_announce.errors import DeviceError, InputError
from rarp_announce.lab.netns import inside, send_raw
from rarp_announce.sniff import KINDS, SeenFrame, _print, decode, decode_any, decode_garp, decode_na, sniff_rarp

MAC = bytes.fromhex("525400123456")
TEXT = "52:54:00:12:34:56"
V4 = "192.0.2.10"
V6 = "2001:db8::10"
LL = "fe80::5054:ff:fe12:3456"


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def garp(vlan: int | None = None, prio: int = 0, pad: bytes | None = None, eth_dst: str = "ff:ff:ff:ff:ff:ff",
         eth_src: str = TEXT, **arp_fields: object) -> bytes:
    """An ARP frame built by scapy: the announcement, except for the fields given."""
    fields: dict[str, Any] = {"hwtype": 1, "ptype": 0x0800, "hwlen": 6, "plen": 4, "op": 1, "hwsrc": TEXT,
                                 "psrc": V4, "hwdst": "00:00:00:00:00:00", "pdst": V4}
    fields.update(arp_fields)
    if vlan is None:
        packet = Ether(dst=eth_dst, src=eth_src, type=0x0806) / ARP(**fields)
    else:
        packet = Ether(dst=eth_dst, src=eth_src) / Dot1Q(vlan=vlan, prio=prio, type=0x0806) / ARP(**fields)
    raw = bytes(packet)
    size = 60 if vlan is None else 64
    return raw + (pad if pad is not None else bytes(max(0, size - len(raw))))


def na(vlan: int | None = None, prio: int = 0, eth_dst: str = "33:33:00:00:00:01", eth_src: str = TEXT,
       target: str = V6, option: object = "default", trailer: bytes = b"", **ip_fields: object) -> bytes:
    """An NA built by scapy (checksum computed by scapy unless `cksum` is given): the
    announcement, except for the fields given. IPv6 fields as is, NA fields prefixed `na_`."""
    ipv6: dict[str, Any] = {"src": target, "dst": "ff02::1", "hlim": 255, "tc": 0, "fl": 0}
    flags: dict[str, Any] = {"R": 0, "S": 0, "O": 1, "tgt": target}
    for key, value in ip_fields.items():
        if key.startswith("na_"):
            flags[key[3:]] = value
        else:
            ipv6[key] = value
    message = ICMPv6ND_NA(**flags)
    if option == "default":
        message = message / ICMPv6NDOptDstLLAddr(lladdr=TEXT)
    elif option is not None:
        message = message / option
    body = IPv6(**ipv6) / message
    if vlan is None:
        packet = Ether(dst=eth_dst, src=eth_src, type=0x86DD) / body
    else:
        packet = Ether(dst=eth_dst, src=eth_src) / Dot1Q(vlan=vlan, prio=prio, type=0x86DD) / body
    return bytes(packet) + trailer


# --- decoding what we send, and scapy's equivalents -------------------------------------------


@pytest.mark.parametrize(("vlan", "prio"), [(None, 0), (100, 5), (4094, 7)])
@pytest.mark.parametrize("ip", [V4, "169.254.1.2", "10.255.255.254"])
def test_garp_of_the_announced_shape(vlan: int | None, prio: int, ip: str) -> None:
    frame = garp_frame(MAC, packed(ip), vlan, prio)
    assert garp(vlan, prio, psrc=ip, pdst=ip) == frame
    size = 60 if vlan is None else 64
    expected = SeenFrame(4.5, TEXT, vlan, prio, 1, True, size, frame, "garp", ip, None)
    assert decode_garp(frame, 4.5) == expected
    assert decode_any(frame, 4.5) == expected
    assert decode_garp(frame + bytes(4), 4.5) == SeenFrame(4.5, TEXT, vlan, prio, 1, True, size + 4, frame + bytes(4), "garp", ip, None)


@pytest.mark.parametrize(("vlan", "prio"), [(None, 0), (100, 5), (4094, 7)])
@pytest.mark.parametrize("ip", [V6, LL, "fe80::1", "fd00::1:2"])
def test_na_of_the_announced_shape(vlan: int | None, prio: int, ip: str) -> None:
    frame = na_frame(MAC, packed(ip), vlan, prio)
    assert na(vlan, prio, target=ip) == frame
    size = 86 if vlan is None else 90
    expected = SeenFrame(7.0, TEXT, vlan, prio, 136, True, size, frame, "na", ip, None)
    assert decode_na(frame, 7.0) == expected
    assert decode_any(frame, 7.0) == expected


def test_rarp_decodes_as_before_with_type_and_no_problem() -> None:
    assert decode_any(rarp_frame(MAC), 1.0) == decode(rarp_frame(MAC), 1.0)
    assert decode(rarp_frame(MAC), 1.0) == SeenFrame(1.0, TEXT, None, 0, 3, True, 60, rarp_frame(MAC), "rarp", None, None)
    short = decode(rarp_frame(MAC)[:42])
    assert short is not None and short.problem == "42 bytes, expected 60 (zero-padded)"
    padding = decode(rarp_frame(MAC)[:59] + b"\x01")
    assert padding is not None and padding.problem == "non-zero padding at byte 59"
    reply = decode(rarp_frame(MAC)[:20] + b"\x00\x04" + rarp_frame(MAC)[22:])
    assert reply is not None and reply.problem == "op 4: QEMU sends 3 (reverse request)"


# --- every way a GARP can miss ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (garp(op=2), "op 2 (a reply): an announcement is a request (op 1), RFC 5227 3"),
        (garp(pdst="192.0.2.99"), "sender IP 192.0.2.10 and target IP 192.0.2.99 differ: a question about another host, not an announcement"),
        (garp(psrc="0.0.0.0"), "sender IP 0.0.0.0: an ARP probe (RFC 5227 2.1.1), not an announcement"),
        (garp(hwdst=TEXT), "target MAC 52:54:00:12:34:56 is not 00:00:00:00:00:00 (RFC 5227 2.3)"),
        (garp(hwdst="ff:ff:ff:ff:ff:ff"), "target MAC ff:ff:ff:ff:ff:ff is not 00:00:00:00:00:00 (RFC 5227 2.3)"),
        (garp(eth_dst="52:54:00:00:00:01"), "destination 52:54:00:00:00:01 is not broadcast"),
        (garp(hwsrc="52:54:00:00:00:02"), "sender MAC 52:54:00:00:00:02 is not the Ethernet source 52:54:00:12:34:56"),
        (garp(eth_src="01:00:5e:00:00:01", hwsrc="01:00:5e:00:00:01"), "source 01:00:5e:00:00:01 is not a unicast MAC"),
        (garp(psrc="224.0.0.1", pdst="224.0.0.1"), "sender IP: IP address '224.0.0.1' is a multicast address: only a unicast address can be announced"),
        (garp(psrc="127.0.0.1", pdst="127.0.0.1"), "sender IP: IP address '127.0.0.1' is a loopback address: it never leaves its host"),
        (garp_frame(MAC, packed(V4))[:15] + b"\x06" + garp_frame(MAC, packed(V4))[16:], "hardware type 6, protocol 0x0800, lengths 6/4: expected Ethernet/IPv4 (1, 0x0800, 6/4)"),
        (garp(vlan=0, prio=3), "VLAN id 0: only 1..4094 carry an announcement"),
        (garp(pad=b""), "42 bytes, expected 60 (zero-padded)"),
        (garp(pad=bytes(17) + b"\x01"), "non-zero padding at byte 59"),
        (garp(vlan=9, pad=bytes(17) + b"\x01"), "non-zero padding at byte 63"),
        (garp(pad=bytes(18) + b"\x00\x07"), "non-zero bytes after the 60-byte frame"),
        (garp(op=2, pdst="192.0.2.1", hwdst="52:54:00:99:99:99"),
         "op 2 (a reply): an announcement is a request (op 1), RFC 5227 3; "
         "sender IP 192.0.2.10 and target IP 192.0.2.1 differ: a question about another host, not an announcement; "
         "target MAC 52:54:00:99:99:99 is not 00:00:00:00:00:00 (RFC 5227 2.3)"),
    ],
    ids=["reply", "other-target-ip", "probe", "target-mac", "target-mac-bcast", "unicast-dst", "sender-mac",
         "multicast-src", "multicast-ip", "loopback-ip", "hw-type", "vlan-0", "short", "padding", "padding-tagged",
         "trailer", "several"],
)
def test_arp_that_is_not_the_announcement_says_why(raw: bytes, problem: str) -> None:
    seen = decode_garp(raw, 2.0)
    assert seen is not None
    assert (seen.kind, seen.qemu_shape, seen.problem) == ("garp", False, problem)
    assert seen.mac == Ether(raw).src
    assert seen.ip == Ether(raw)[ARP].psrc
    assert decode_any(raw) == decode_garp(raw)


def test_truncated_arp_is_reported_not_crashed() -> None:
    raw = garp_frame(MAC, packed(V4))[:30]
    seen = decode_garp(raw)
    assert seen is not None and not seen.qemu_shape
    assert seen.problem is not None and seen.problem.startswith("truncated: 16 bytes of ARP, expected 28")


# --- every way an NA can miss -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (na(na_O=0), "Override flag clear: neighbours keep the MAC they cached (RFC 4861 7.2.5)"),
        (na(na_S=1), "Solicited flag set: an answer to a solicitation, not an announcement (RFC 4861 7.2.6)"),
        (na(na_R=1), "Router flag set: a guest announces a host address (R=0)"),
        (na(na_res=1), "reserved bits set (0x00000001): RFC 4861 4.4 says zero"),
        (na(hlim=64), "hop limit 64, expected 255: receivers drop any other (RFC 4861 7.1.2)"),
        (na(na_cksum=0x1234), "ICMPv6 checksum 0x1234 is wrong, expected "),
        (na(eth_dst="52:54:00:00:00:01", dst="2001:db8::1"),
         "destination 52:54:00:00:00:01 is not 33:33:00:00:00:01 (all-nodes); "
         "IPv6 destination 2001:db8::1 is not ff02::1: an unsolicited NA goes to all-nodes (RFC 4861 7.2.6)"),
        (na(src="2001:db8::99"), "IPv6 source 2001:db8::99 is not the target 2001:db8::10"),
        (na(src="fe80::1"), "IPv6 source fe80::1 is not the target 2001:db8::10"),
        (na(target="ff02::1"), "target: IP address 'ff02::1' is a multicast address: only a unicast address can be announced"),
        (na(tc=4), "traffic class 4 / flow label 0: expected 0 / 0"),
        (na(fl=0xABCDE), "traffic class 0 / flow label 703710: expected 0 / 0"),
        (na(option=None), "IPv6 payload length 24, expected 32 (the NA and one option); option type 0 length 0: expected one target link-layer address option (type 2, length 1), RFC 4861 4.6.1"),
        (na(option=ICMPv6NDOptSrcLLAddr(lladdr=TEXT)), "option type 1 length 1: expected one target link-layer address option (type 2, length 1), RFC 4861 4.6.1"),
        (na(option=ICMPv6NDOptDstLLAddr(lladdr="52:54:00:aa:bb:cc")), "target link-layer address 52:54:00:aa:bb:cc is not the Ethernet source 52:54:00:12:34:56"),
        (na(option=ICMPv6NDOptDstLLAddr(lladdr=TEXT) / ICMPv6NDOptSrcLLAddr(lladdr=TEXT)), "IPv6 payload length 40, expected 32 (the NA and one option)"),
        (na(eth_src="33:33:00:00:00:02", option=ICMPv6NDOptDstLLAddr(lladdr="33:33:00:00:00:02")), "source 33:33:00:00:00:02 is not a unicast MAC"),
        (na(vlan=4095), "VLAN id 4095: only 1..4094 carry an announcement"),
        (na(trailer=b"\x00\x01"), "non-zero bytes after the 86-byte frame"),
    ],
    ids=["no-override", "solicited", "router", "reserved", "hop-limit", "checksum", "solicited-unicast",
         "source", "source-link-local", "multicast-target", "traffic-class", "flow-label", "no-option",
         "source-lladdr-option", "other-lladdr", "two-options", "multicast-src", "vlan-4095", "trailer"],
)
def test_na_that_is_not_the_announcement_says_why(raw: bytes, problem: str) -> None:
    seen = decode_na(raw, 3.0)
    assert seen is not None
    assert (seen.kind, seen.qemu_shape, seen.opcode) == ("na", False, 136)
    assert seen.problem is not None and seen.problem.startswith(problem), seen.problem
    assert seen.ip == Ether(raw)[ICMPv6ND_NA].tgt
    assert decode_any(raw) == decode_na(raw)


def test_checksum_verdict_agrees_with_scapy() -> None:
    raw = na(na_cksum=0x1234)
    seen = decode_na(raw)
    packet = Ether(raw)
    del packet[ICMPv6ND_NA].cksum
    right = Ether(bytes(packet))[ICMPv6ND_NA].cksum
    assert seen is not None and seen.problem == f"ICMPv6 checksum 0x1234 is wrong, expected 0x{right:04x}"


def test_a_flipped_flag_with_the_old_checksum_names_both() -> None:
    frame = bytearray(na_frame(MAC, packed(V6)))
    frame[58] = 0x00  # O cleared, checksum left as it was
    seen = decode_na(bytes(frame))
    assert seen is not None and seen.problem is not None
    assert "ICMPv6 checksum" in seen.problem and "Override flag clear" in seen.problem


def test_truncated_na_is_reported_not_crashed() -> None:
    raw = na_frame(MAC, packed(V6))[:70]
    seen = decode_na(raw)
    assert seen is not None and not seen.qemu_shape
    assert seen.problem is not None and "truncated: 16 bytes of IPv6 payload, its header says 32" in seen.problem


# --- what is not an announcement at all -------------------------------------------------------


def test_other_frames_are_ignored() -> None:
    others = [
        bytes(Ether(src=TEXT, dst="33:33:ff:00:00:02") / IPv6(src="fe80::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fe80::2")),
        bytes(Ether(src=TEXT, dst="33:33:00:00:00:02") / IPv6(src="fe80::1", dst="ff02::2", hlim=255) / ICMPv6ND_RS()),
        bytes(Ether(src=TEXT, dst="33:33:00:00:00:01") / IPv6(src=V6, dst="ff02::1") / UDP(sport=1, dport=2) / Raw(b"x" * 32)),
        bytes(Ether(src=TEXT, dst="52:54:00:00:00:01") / IP(src=V4, dst="192.0.2.1") / UDP()),
        bytes(Ether(src=TEXT, type=0x88B5) / Padding(load=bytes(46))),
    ]
    for raw in others:
        assert decode_any(raw) is None
        assert decode_garp(raw) is None
        assert decode_na(raw) is None
    # The RARP-only decoder keeps ignoring ARP, and the IP decoders ignore RARP.
    assert decode(garp_frame(MAC, packed(V4))) is None
    assert decode_garp(rarp_frame(MAC)) is None
    assert decode_na(rarp_frame(MAC)) is None
    assert decode_na(garp_frame(MAC, packed(V4))) is None


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [(("rarp",), ["rarp"]), (("garp",), ["garp"]), (("na",), ["na"]), (("garp", "na"), ["garp", "na"]), (KINDS, ["rarp", "garp", "na"])],
)
def test_decode_any_keeps_only_the_asked_kinds(kinds: Collection[str], expected: list[str]) -> None:
    frames = [rarp_frame(MAC), garp_frame(MAC, packed(V4)), na_frame(MAC, packed(V6))]
    seen = [decode_any(frame, 0.0, kinds) for frame in frames]
    assert [s.kind for s in seen if s is not None] == expected


# --- printing ---------------------------------------------------------------------------------


def test_text_lines_name_type_address_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    for raw, when in [
        (garp_frame(MAC, packed(V4), 100, 2), 10.25),
        (na_frame(MAC, packed(LL)), 10.5),
        (na(hlim=64), 10.75),
        (rarp_frame(MAC), 11.0),
    ]:
        _print(decode_any(raw, when), 10.0, False, extended=True)  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "+   0.250s  52:54:00:12:34:56  vlan 100   garp  192.0.2.10                64 bytes  announcement shape",
        "+   0.500s  52:54:00:12:34:56  vlan -     na    fe80::5054:ff:fe12:3456   86 bytes  announcement shape",
        "+   0.750s  52:54:00:12:34:56  vlan -     na    2001:db8::10              86 bytes  NOT the announcement shape: "
        "hop limit 64, expected 255: receivers drop any other (RFC 4861 7.1.2)",
        "+   1.000s  52:54:00:12:34:56  vlan -     rarp  op 3                      60 bytes  QEMU shape",
    ]


def test_json_records_add_type_ip_and_problem(capsys: pytest.CaptureFixture[str]) -> None:
    _print(decode_any(garp(op=2), 5.0), 0.0, True, extended=True)  # type: ignore[arg-type]
    _print(decode_any(na_frame(MAC, packed(V6), 7, 1), 6.0), 0.0, True, extended=True)  # type: ignore[arg-type]
    _print(decode_any(rarp_frame(MAC), 7.0), 0.0, True, extended=True)  # type: ignore[arg-type]
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [
        {"time": 5.0, "mac": TEXT, "vlan": None, "priority": 0, "opcode": 2, "qemu_shape": False, "length": 60,
         "type": "garp", "ip": V4, "problem": "op 2 (a reply): an announcement is a request (op 1), RFC 5227 3"},
        {"time": 6.0, "mac": TEXT, "vlan": 7, "priority": 1, "opcode": 136, "qemu_shape": True, "length": 90,
         "type": "na", "ip": V6, "problem": None},
        {"time": 7.0, "mac": TEXT, "vlan": None, "priority": 0, "opcode": 3, "qemu_shape": True, "length": 60,
         "type": "rarp", "ip": None, "problem": None},
    ]


def test_rarp_only_output_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    _print(decode(rarp_frame(MAC, 7), 100.25), 100.0, False)  # type: ignore[arg-type]
    _print(decode(rarp_frame(MAC), 100.5), 100.0, True)  # type: ignore[arg-type]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "+   0.250s  52:54:00:12:34:56  vlan 7     op 3  64 bytes  QEMU shape"
    assert json.loads(out[1]) == {"time": 100.5, "mac": TEXT, "vlan": None, "priority": 0, "opcode": 3,
                                  "qemu_shape": True, "length": 60}


def test_unknown_kind_is_refused_before_touching_a_device() -> None:
    with pytest.raises(InputError, match="unknown frame type\\(s\\) arp: expected some of rarp, garp, na"):
        sniff_rarp("nosuch0", timeout=0.1, kinds=("garp", "arp"))
    with pytest.raises(InputError, match="unknown frame type"):
        sniff_rarp("nosuch0", timeout=0.1, kinds=())
    with pytest.raises(InputError, match="unknown frame type\\(s\\) arpa"):
        sniff_rarp("nosuch0", timeout=0.1, kinds="arpa")


def test_a_missing_device_is_refused_with_its_name() -> None:
    with pytest.raises(DeviceError, match="^device 'nosuch0': no such device on this host$"):
        sniff_rarp("nosuch0", timeout=0.1, kinds="na")


# --- live: frames written on tx, sniffed on rx, in a netns of the test's own ------------------


def _bound_packet_sockets(pid: int, tid: int) -> int:
    # /proc/PID/task/TID/net is the netns of that thread; Iface (5th column) is 0 until bound.
    try:
        with open(f"/proc/{pid}/task/{tid}/net/packet") as table:
            return sum(1 for row in table.readlines()[1:] if row.split()[4] != "0")
    except FileNotFoundError:
        return 0


@contextmanager
def sniffing(ns: str, **kwargs: object) -> Iterator[dict[str, object]]:
    """sniff_rarp on rx in a thread that entered `ns`; the block runs once its socket is bound."""
    result: dict[str, object] = {}

    def run() -> None:
        result["tid"] = threading.get_native_id()
        try:
            with inside(ns):
                result["seen"] = sniff_rarp("rx", as_json=True, **kwargs)  # type: ignore[arg-type]
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "error" not in result:
        tid = result.get("tid")
        if isinstance(tid, int) and _bound_packet_sockets(os.getpid(), tid):
            break
        time.sleep(0.01)
    else:
        thread.join(1)
        raise AssertionError(f"sniff did not bind its packet socket in time: {result.get('error')!r}")
    try:
        yield result
    finally:
        thread.join(15)
        assert not thread.is_alive(), "sniff outlived its timeout"
        if "error" in result:
            raise result["error"]  # type: ignore[misc]


def _records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_live_sniff_reports_every_kind_and_its_shape(veth: str, capsys: pytest.CaptureFixture[str]) -> None:
    sent = [
        rarp_frame(MAC),
        garp_frame(MAC, packed(V4)),
        bytes(Ether(src=TEXT, dst="52:54:00:00:00:01") / IP(src=V4, dst="192.0.2.1") / UDP()),  # not an announcement: skipped
        garp_frame(MAC, packed("10.0.0.7"), 100, 3),
        na_frame(MAC, packed(LL)),
        na_frame(MAC, packed(V6), 7),
        garp(pdst="192.0.2.99"),  # an ordinary request
        na(hlim=64),
        na(na_S=1, na_O=0),
    ]
    with sniffing(veth, count=8, timeout=10, kinds=("rarp", "garp", "na")) as result:
        for frame in sent:
            send_raw(veth, "tx", frame)
    assert result["seen"] == 8
    records = _records(capsys)
    times = [record.pop("time") for record in records]
    assert times == sorted(times)
    assert [(r["type"], r["ip"], r["vlan"], r["priority"], r["qemu_shape"], r["length"]) for r in records] == [
        ("rarp", None, None, 0, True, 60),
        ("garp", V4, None, 0, True, 60),
        ("garp", "10.0.0.7", 100, 3, True, 64),
        ("na", LL, None, 0, True, 86),
        ("na", V6, 7, 0, True, 90),
        ("garp", V4, None, 0, False, 60),
        ("na", V6, None, 0, False, 86),
        ("na", V6, None, 0, False, 86),
    ]
    assert all(r["mac"] == TEXT for r in records)
    assert [r["problem"] for r in records[5:]] == [
        "sender IP 192.0.2.10 and target IP 192.0.2.99 differ: a question about another host, not an announcement",
        "hop limit 64, expected 255: receivers drop any other (RFC 4861 7.1.2)",
        "Solicited flag set: an answer to a solicitation, not an announcement (RFC 4861 7.2.6); "
        "Override flag clear: neighbours keep the MAC they cached (RFC 4861 7.2.5)",
    ]


def test_live_sniff_by_default_still_sees_only_rarp(veth: str, capsys: pytest.CaptureFixture[str]) -> None:
    with sniffing(veth, count=1, timeout=10) as result:
        for frame in (garp_frame(MAC, packed(V4)), na_frame(MAC, packed(V6)), rarp_frame(MAC, 5)):
            send_raw(veth, "tx", frame)
    assert result["seen"] == 1
    (record,) = _records(capsys)
    assert record | {"time": 0} == {"time": 0, "mac": TEXT, "vlan": 5, "priority": 0, "opcode": 3,
                                     "qemu_shape": True, "length": 64}


def test_live_sniff_of_one_kind_skips_the_others(veth: str, capsys: pytest.CaptureFixture[str]) -> None:
    with sniffing(veth, count=2, timeout=10, kinds=("na",)) as result:
        for frame in (rarp_frame(MAC), garp_frame(MAC, packed(V4)), na_frame(MAC, packed(LL)), na_frame(MAC, packed(V6), 9)):
            send_raw(veth, "tx", frame)
    assert result["seen"] == 2
    assert [(r["type"], r["ip"], r["vlan"]) for r in _records(capsys)] == [("na", LL, None), ("na", V6, 9)]


def test_live_sniff_times_out_with_what_it_saw(veth: str, capsys: pytest.CaptureFixture[str]) -> None:
    # It returned with one of the two frames it asked for: its timeout ended it (sniffing()
    # bounds the wait, so a sniff that ignored its timeout fails instead of hanging).
    with sniffing(veth, count=2, timeout=0.5, kinds=("garp",)) as result:
        send_raw(veth, "tx", garp_frame(MAC, packed(V4)))
    assert result["seen"] == 1
    assert [r["type"] for r in _records(capsys)] == ["garp"]
