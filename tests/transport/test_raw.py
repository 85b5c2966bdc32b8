"""The packet-socket sink on real devices: a veth pair in a netns this test makes, read back on the peer."""

from __future__ import annotations

import asyncio
import os

import pytest

from rarp_announce.frames import rarp_frame
from rarp_announce.errors import DeviceError
from rarp_announce.lab.netns import Capture, inside
from rarp_announce.model import Target
from rarp_announce.transport.raw import RawSocketSink

MAC = bytes.fromhex("525400123456")
TX = Target("52:54:00:12:34:56", "tx")


def test_one_socket_per_device_is_reused(veth: str) -> None:
    frames = [rarp_frame(MAC), rarp_frame(MAC, 100, 3)]
    with Capture(veth, "rx") as capture, inside(veth):
        sink = RawSocketSink()
        try:
            asyncio.run(sink.prepare(TX, frames))
            fd = sink._sockets["tx"].fileno()
            open_fds = len(os.listdir("/proc/self/fd"))
            for _ in range(10):
                for frame in frames:
                    sink.send(TX, frame)
            asyncio.run(sink.prepare(TX, frames))  # preparing again keeps the open socket
            assert sink._sockets["tx"].fileno() == fd
            assert sink.devices == ["tx"]
            assert len(os.listdir("/proc/self/fd")) == open_fds
        finally:
            sink.close()
        assert sink.devices == []
        got = capture.frames(count=20, timeout=3)
    assert [c.frame for c in got] == frames * 10


def test_a_send_without_prepare_opens_the_socket(veth: str) -> None:
    with Capture(veth, "rx") as capture, inside(veth):
        sink = RawSocketSink()
        try:
            sink.send(TX, rarp_frame(MAC))
            assert sink.devices == ["tx"]
        finally:
            sink.close()
        assert [c.frame for c in capture.frames(count=1, timeout=3)] == [rarp_frame(MAC)]


def test_a_missing_device_is_named(veth: str) -> None:
    with inside(veth):
        sink = RawSocketSink()
        with pytest.raises(DeviceError) as caught:
            asyncio.run(sink.prepare(Target("52:54:00:12:34:56", "nosuch0"), []))
    assert caught.value.device == "nosuch0"
    assert str(caught.value) == "device 'nosuch0': no such device on this host"
    assert sink.devices == []


@pytest.mark.parametrize("name", ["a" * 16, "a/b", "\udcff"])
def test_an_impossible_interface_name_is_refused(veth: str, name: str) -> None:
    with inside(veth), pytest.raises(DeviceError) as caught:
        RawSocketSink().send(Target("52:54:00:12:34:56", name), rarp_frame(MAC))
    assert caught.value.reason in ("not a valid interface name", "no such device on this host")


def test_a_device_going_down_then_away_is_named_and_its_socket_dropped(veth: str) -> None:
    from pyroute2 import NetNS

    with inside(veth):
        sink = RawSocketSink()
        asyncio.run(sink.prepare(TX, []))
    try:
        with NetNS(veth) as ns:
            ns.link("set", ifname="tx", state="down")
        with pytest.raises(DeviceError) as caught:
            sink.send(TX, rarp_frame(MAC))
        assert (caught.value.device, caught.value.reason) == ("tx", "device is down")
        assert sink.devices == []  # a failed socket is dropped, the next send opens afresh
        with NetNS(veth) as ns:
            ns.link("set", ifname="tx", state="up")
        with inside(veth):
            sink.send(TX, rarp_frame(MAC))
        assert sink.devices == ["tx"]
        with NetNS(veth) as ns:
            ns.link("del", ifname="tx")
        with pytest.raises(DeviceError) as caught:
            sink.send(TX, rarp_frame(MAC))
        assert caught.value.device == "tx"
    finally:
        sink.close()
