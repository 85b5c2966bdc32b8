"""A classic pcap file (tcpdump -r, Wireshark) with each frame stamped when it was "sent"."""

from __future__ import annotations

import struct
import time
from collections.abc import Collection, Sequence

from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.model import Target

# The classic libpcap format: https://wiki.wireshark.org/Development/LibpcapFileFormat
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_MAGIC = 0xA1B2C3D4
_LINKTYPE_ETHERNET = 1


class PcapSink:
    """Frames exactly as they would enter the network: an OVS access port's frame is untagged."""

    offline = True
    prints_frames = False

    def __init__(self, path: str) -> None:
        if not path:
            raise InputError("--pcap needs a file name: give a path such as /tmp/announce.pcap")
        try:
            self._file = open(path, "wb")
        except OSError as exc:  # a path that cannot be a file here: the operator's to fix
            raise InputError(f"cannot write pcap file {path!r}: {exc.strerror}") from None
        try:
            self._file.write(_GLOBAL.pack(_MAGIC, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET))
            self._file.flush()
        except OSError as exc:  # a full or failing disk: the run failed, as when it fills mid-run
            self.close()
            raise AnnounceError(f"cannot write pcap file {path!r}: {exc.strerror}") from None
        self.path = path

    def destination(self, routes: Collection[str]) -> str:
        return f"to {self.path}"

    async def port_number(self, bridge: str, port: str) -> int | None:
        return None  # a file has no bridge to ask: the port's number stays unknown ("?")

    async def prepare(self, target: Target, frames: Sequence[bytes]) -> None:
        pass

    def claim(self, target: Target) -> str:
        # A pcap file holds frames only: the FDB write is reported by the command, never made.
        assert target.bridge_port is not None
        return f"not written (pcap): fdb replace {target.mac} dev {target.bridge_port.name} master dynamic"

    def send(self, target: Target, frame: bytes) -> None:
        seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
        self._file.write(_RECORD.pack(seconds, micros, len(frame), len(frame)) + frame)
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a full disk already failed the frame that hit it
