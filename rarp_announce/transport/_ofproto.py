"""The few OpenFlow messages the OVS transport speaks, built and parsed with `struct`; no I/O.

Wire layouts follow the OpenFlow switch specifications and Open vSwitch's own headers, which a
reader can open side by side: include/openflow/openflow-1.0.h, openflow-1.1.h, openflow-1.3.h,
openflow-1.4.h, openflow-1.5.h, and lib/ofp-msgs.h (the per-version message type numbers) in
https://github.com/openvswitch/ovs. Section numbers below are those of OpenFlow 1.0.0 ("OF1.0
5.x"), of 1.1.0/1.2 (appendix A) and of 1.3.1+ / 1.4 / 1.5.1, where the protocol is section 7.

Every multi-byte field is big-endian ("network order"), hence `!` in every struct format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

OFP10, OFP11, OFP12, OFP13, OFP14, OFP15 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
VERSIONS: tuple[int, ...] = (OFP10, OFP11, OFP12, OFP13, OFP14, OFP15)
"""Every wire version we offer in HELLO, lowest first."""

# Message types (ofp_header.type). HELLO..ECHO_REPLY are "immutable" across versions (OF1.5.1
# 7.1; lib/ofp-msgs.h marks them <all>). FEATURES_* and PACKET_OUT kept their numbers from 1.0
# on; the statistics (1.3+: "multipart") pair moved from 16/17 in 1.0 to 18/19 in 1.1+ because
# GROUP_MOD and TABLE_MOD were inserted before them (openflow-1.0.h `enum ofp10_type`,
# openflow-1.1.h `enum ofp11_type`).
OFPT_HELLO = 0
OFPT_ERROR = 1
OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
OFPT_FEATURES_REQUEST = 5
OFPT_FEATURES_REPLY = 6
OFPT_PACKET_OUT = 13
OFPT10_STATS_REQUEST = 16
OFPT10_STATS_REPLY = 17
OFPT11_STATS_REQUEST = 18  # OFPT_MULTIPART_REQUEST from 1.3 on
OFPT11_STATS_REPLY = 19  # OFPT_MULTIPART_REPLY from 1.3 on

OFPMP_PORT_DESC = 13  # OF1.3.1+ 7.3.5 `enum ofp_multipart_type`; an OVS extension in 1.0-1.2
OFPMPF_REPLY_MORE = 1 << 0  # more parts follow (OF1.0 5.3.5 OFPSF_REPLY_MORE, OF1.3.1+ 7.3.5)

OFPHET_VERSIONBITMAP = 1  # OF1.3.1+ 7.5.1: the one HELLO element type defined so far

OFPET_HELLO_FAILED = 0
OFPET_EXPERIMENTER = 0xFFFF  # OF1.2+: ofp_error_experimenter_msg, with a 32-bit experimenter id

OFP_NO_BUFFER = 0xFFFFFFFF  # buffer_id: the frame travels inside the packet-out

# Port numbers: 16 bits in 1.0, 32 bits from 1.1 on; everything from OFPP_MAX up is a reserved
# ("fake") port: IN_PORT, TABLE, NORMAL, FLOOD, ALL, CONTROLLER, LOCAL, NONE/ANY.
OFPP10_MAX = 0xFF00
OFPP10_TABLE = 0xFFF9
OFPP11_MAX = 0xFFFFFF00
OFPP11_TABLE = 0xFFFFFFF9
OFPP11_ANY = 0xFFFFFFFF

OFPAT_OUTPUT = 0
OFPMT_OXM = 1  # OF1.2+ ofp_match type "OpenFlow Extensible Match"
# OXM header of OFPXMC_OPENFLOW_BASIC (0x8000) field OFPXMT_OFB_IN_PORT (0), no mask, 4 bytes
# of value (OF1.3.1+ 7.2.3, OXM TLVs): (class << 16) | (field << 9) | (hasmask << 8) | length.
_OXM_IN_PORT = (0x8000 << 16) | (0 << 9) | (0 << 8) | 4

HEADER = struct.Struct("!BBHI")  # ofp_header: version, type, length, xid (OF1.0 5.1, OF1.5.1 7.1)
MAX_LENGTH = 0xFFFF  # ofp_header.length is 16 bits and counts the header

_HELLO_ELEMENT = struct.Struct("!HHI")  # type, length, one 32-bit bitmap word
_ERROR = struct.Struct("!HH")  # ofp_error_msg type, code (OF1.0 5.4.4, OF1.5.1 7.4.4)
# OF1.0 ofp_packet_out: buffer_id, in_port (16 bits), actions_len (OF1.0 5.3.6), then one
# ofp_action_output: type, len 8, port (16 bits), max_len (OF1.0 5.2.4).
_PACKET_OUT10 = struct.Struct("!IHH" "HHHH")
# OF1.1-1.4 ofp_packet_out: buffer_id, in_port (32 bits), actions_len, pad[6] (OF1.1 A.3.7,
# OF1.3.1+ 7.3.7), then ofp_action_output: type, len 16, port (32 bits), max_len, pad[6]
# (OF1.3.1+ 7.2.5).
_PACKET_OUT11 = struct.Struct("!IIH6x" "HHIH6x")
# OF1.5 ofp_packet_out: buffer_id, actions_len, pad[2], then an ofp_match carrying in_port as
# an OXM field (OF1.5.1 7.3.7): type OXM, length 4 + 8 (excludes the padding to 8 bytes),
# the OXM, 4 zero bytes of padding; then the same 16-byte output action.
_PACKET_OUT15 = struct.Struct("!IH2x" "HHII4x" "HHIH6x")
_MULTIPART11 = struct.Struct("!HH4x")  # ofp_multipart_request/reply: type, flags, pad[4]
_STATS10 = struct.Struct("!HH")  # OF1.0 ofp_stats_request/reply: type, flags
_PORT_DESC15 = struct.Struct("!I4x")  # OF1.5.1 ofp_port_desc_request: port_no, pad[4]

_FEATURES_LEN = 32  # ofp_switch_features, header included (OF1.0 5.3.1, OF1.3.1+ 7.3.1)
_PORT10_LEN = 48  # OF1.0 ofp_phy_port: port_no (16 bits), hw_addr, name[16] at offset 8
_PORT11_LEN = 64  # OF1.1-1.3 ofp_port: port_no (32 bits), pad, hw_addr, pad, name[16] at 16
_PORT14_LEN = 40  # OF1.4+ ofp_port without properties: port_no, length, ..., name[16] at 16
_NAME_LEN = 16  # OFP_MAX_PORT_NAME_LEN


class Header(NamedTuple):
    version: int
    type: int
    length: int
    xid: int


def header(message: bytes) -> Header:
    """The ofp_header at the start of `message`."""
    if len(message) < HEADER.size:
        raise ValueError(f"an OpenFlow message has at least {HEADER.size} bytes, got {len(message)}")
    return Header(*HEADER.unpack_from(message))


def version_name(version: int) -> str:
    """`1.3` for wire version 0x04; unknown versions in hex, as OVS prints them."""
    return f"1.{version - 1}" if 1 <= version <= 0x1F else f"0x{version:02x}"


def versions_text(versions: Iterable[int]) -> str:
    return ", ".join(version_name(v) for v in sorted(set(versions)))


def _message(version: int, type_: int, body: bytes = b"", xid: int = 0) -> bytes:
    length = HEADER.size + len(body)
    if length > MAX_LENGTH:
        raise ValueError(f"an OpenFlow message has at most {MAX_LENGTH} bytes, this one {length}")
    return HEADER.pack(version, type_, length, xid & 0xFFFFFFFF) + body


def _check_version(version: int) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unsupported OpenFlow wire version 0x{version:02x}: expected one of "
                         + ", ".join(f"0x{v:02x}" for v in VERSIONS))


# -- HELLO and version negotiation ---------------------------------------------------------


def hello(versions: Iterable[int] = VERSIONS, xid: int = 0) -> bytes:
    """OFPT_HELLO in the highest offered version, with a version bitmap of all of them.

    The bitmap (OF1.3.1+ 7.5.1) lets a peer that allows only, say, 1.3 and 1.5 pick 1.5 even
    though the header alone ("I speak up to X") could not say that 1.4 is missing.
    """
    offered = sorted(set(versions))
    if not offered:
        raise ValueError("offer at least one OpenFlow version")
    for version in offered:
        if not 1 <= version <= 31:
            raise ValueError(f"OpenFlow wire version 0x{version:02x} does not fit a 32-bit version bitmap")
    bitmap = 0
    for version in offered:
        bitmap |= 1 << version
    # Element length counts its 4-byte header and the bitmap word; 8 is already 8-aligned.
    element = _HELLO_ELEMENT.pack(OFPHET_VERSIONBITMAP, _HELLO_ELEMENT.size, bitmap)
    return _message(offered[-1], OFPT_HELLO, element, xid)


def hello_versions(message: bytes) -> frozenset[int] | None:
    """The versions a HELLO's version bitmap announces, or None when it carries no bitmap."""
    head = header(message)
    if head.type != OFPT_HELLO:
        raise ValueError(f"not an OpenFlow HELLO (type {head.type})")
    offset, end = HEADER.size, min(head.length, len(message))
    while offset + 4 <= end:
        element_type, element_len = struct.unpack_from("!HH", message, offset)
        if element_len < 4:
            break  # garbled: fall back to the header version, as OVS's ofputil_decode_hello does
        if element_type == OFPHET_VERSIONBITMAP and element_len > 4:
            versions: set[int] = set()
            words = range(offset + 4, min(offset + element_len, end) - 3, 4)
            for word_index, word_offset in enumerate(words):
                (word,) = struct.unpack_from("!I", message, word_offset)
                versions.update(word_index * 32 + bit for bit in range(32) if word >> bit & 1)
            versions.discard(0)  # there is no OpenFlow version 0
            return frozenset(versions)
        offset += (element_len + 7) // 8 * 8  # elements are padded to 8 bytes
    return None


def negotiate(ours: Iterable[int], their_hello: bytes) -> int | None:
    """The version both sides use after exchanging HELLOs, or None when there is none.

    Section "Connection Setup" (6.3.1 in OF1.3, 6.3.3 in OF1.5.1): when both HELLOs carry a
    version bitmap, the highest version set in both; otherwise the smaller of the two header
    versions, which fails when the side receiving it does not support that version. Our own
    HELLO always has a bitmap.
    """
    offered = set(ours)
    if not offered:
        return None
    theirs = hello_versions(their_hello)
    if theirs is not None:
        common = offered & theirs
        return max(common) if common else None
    version = min(max(offered), header(their_hello).version)
    return version if version in offered else None


def peer_versions_text(their_hello: bytes) -> str:
    """What a peer's HELLO says it allows, for messages: `1.3, 1.5` or `up to 1.0`."""
    theirs = hello_versions(their_hello)
    if theirs is not None:
        return versions_text(theirs)
    return f"up to {version_name(header(their_hello).version)}"


# -- ECHO ----------------------------------------------------------------------------------


def echo_request(version: int, xid: int = 0, payload: bytes = b"") -> bytes:
    return _message(version, OFPT_ECHO_REQUEST, payload, xid)


def echo_reply(request: bytes) -> bytes:
    """OFPT_ECHO_REPLY to an ECHO_REQUEST: same version, xid and payload (OF1.5.1 7.5.3)."""
    head = header(request)
    if head.type != OFPT_ECHO_REQUEST:
        raise ValueError(f"not an OpenFlow ECHO_REQUEST (type {head.type})")
    return _message(head.version, OFPT_ECHO_REPLY, bytes(request[HEADER.size:head.length]), head.xid)


# -- PACKET_OUT ----------------------------------------------------------------------------


def check_in_port(version: int, in_port: int) -> None:
    """Refuse port 0 and every reserved port: frames enter only as a real (guest) port.

    LOCAL above all: a frame injected as the bridge's internal port makes OVS learn the guest's
    MAC there, so the guest's traffic goes to the host until the guest speaks.
    """
    _check_version(version)
    limit = OFPP10_MAX if version == OFP10 else OFPP11_MAX
    if not 0 < in_port < limit:
        raise ValueError(
            f"OpenFlow in_port {in_port:#x} is not a port a guest can own: expected 1..{limit - 1:#x} "
            "(0 is invalid; LOCAL, NORMAL, CONTROLLER and the other reserved ports are never used)"
        )


def packet_out(version: int, in_port: int, frame: bytes, xid: int = 0) -> bytes:
    """OFPT_PACKET_OUT that runs `frame` through the flow table as if `in_port` had sent it.

    No buffer (the frame is in the message), one action: output to OFPP_TABLE, max_len 0
    (only meaningful for output to CONTROLLER). OVS then learns the source MAC on `in_port`
    and applies that port's VLAN, exactly as for a frame the guest sent itself.
    """
    check_in_port(version, in_port)
    if version == OFP10:
        body = _PACKET_OUT10.pack(OFP_NO_BUFFER, in_port, 8, OFPAT_OUTPUT, 8, OFPP10_TABLE, 0)
    elif version < OFP15:
        body = _PACKET_OUT11.pack(OFP_NO_BUFFER, in_port, 16, OFPAT_OUTPUT, 16, OFPP11_TABLE, 0)
    else:
        body = _PACKET_OUT15.pack(OFP_NO_BUFFER, 16, OFPMT_OXM, 4 + 8, _OXM_IN_PORT, in_port,
                                  OFPAT_OUTPUT, 16, OFPP11_TABLE, 0)
    return _message(version, OFPT_PACKET_OUT, body + frame, xid)


# -- port descriptions ---------------------------------------------------------------------


def port_desc_request(version: int, xid: int) -> bytes:
    """The request whose reply lists the switch's ports with their names and numbers.

    1.0-1.2: OFPT_FEATURES_REQUEST, whose reply ends with the ports (OF1.0 5.3.1, OF1.1 A.3.1;
    1.3 dropped them from it). 1.3+: OFPMP_PORT_DESC multipart request (OF1.3.1+ 7.3.5), whose
    1.5 body names the port wanted: OFPP_ANY for all (OF1.5.1 7.3.5; openflow-1.5.h
    `ofp15_port_desc_request`: a zero there asks for port 0 and gets an empty list).
    """
    _check_version(version)
    if version <= OFP12:
        return _message(version, OFPT_FEATURES_REQUEST, b"", xid)
    body = _MULTIPART11.pack(OFPMP_PORT_DESC, 0)
    if version >= OFP15:
        body += _PORT_DESC15.pack(OFPP11_ANY)
    return _message(version, OFPT11_STATS_REQUEST, body, xid)


def is_port_desc_reply(message: bytes) -> bool:
    head = header(message)
    if head.type == OFPT_FEATURES_REPLY:
        return True
    stats_reply = OFPT10_STATS_REPLY if head.version == OFP10 else OFPT11_STATS_REPLY
    if head.type != stats_reply or len(message) < HEADER.size + 2:
        return False
    kind: int = struct.unpack_from("!H", message, HEADER.size)[0]
    return kind == OFPMP_PORT_DESC


def _port_name(message: bytes, offset: int) -> str:
    raw = message[offset:offset + _NAME_LEN]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_ports(version: int, message: bytes) -> tuple[dict[str, int], bool]:
    """(port name -> OpenFlow port number, whether more reply parts follow) from a reply to
    `port_desc_request`.

    Reserved ports (LOCAL: the bridge's internal port, named like the bridge) are left out:
    nothing here may ever inject as one of them.
    """
    _check_version(version)
    head = header(message)
    if head.version != version:
        raise ValueError(f"reply in OpenFlow {version_name(head.version)}, expected {version_name(version)}")
    if head.length > len(message) or head.length < HEADER.size:
        raise ValueError(f"truncated OpenFlow message: header says {head.length} bytes, got {len(message)}")
    end = head.length
    more = False
    if head.type == OFPT_FEATURES_REPLY:
        offset = _FEATURES_LEN
        if version >= OFP13:
            return {}, False  # 1.3+ features replies carry no ports
    elif head.type == (OFPT10_STATS_REPLY if version == OFP10 else OFPT11_STATS_REPLY):
        stats = _STATS10 if version == OFP10 else _MULTIPART11
        if end < HEADER.size + stats.size:
            raise ValueError("truncated OpenFlow multipart reply")
        kind, flags = stats.unpack_from(message, HEADER.size)[:2]
        if kind != OFPMP_PORT_DESC:
            raise ValueError(f"multipart reply of type {kind}, not a port description ({OFPMP_PORT_DESC})")
        more = bool(flags & OFPMPF_REPLY_MORE)
        offset = HEADER.size + stats.size
    else:
        raise ValueError(f"OpenFlow message type {head.type} lists no ports")

    ports: dict[str, int] = {}
    limit = OFPP10_MAX if version == OFP10 else OFPP11_MAX
    while offset < end:
        if version == OFP10:
            size, name_at, number_format = _PORT10_LEN, 8, "!H"
        elif version <= OFP13:
            size, name_at, number_format = _PORT11_LEN, 16, "!I"
        else:
            # OF1.4+ ofp_port: port_no, then its own length (properties included, 8-aligned).
            if offset + _PORT14_LEN > end:
                raise ValueError("truncated OpenFlow port description")
            size, name_at, number_format = struct.unpack_from("!H", message, offset + 4)[0], 16, "!I"
            if size < _PORT14_LEN or size % 8:
                raise ValueError(f"bad OpenFlow 1.4+ port description length {size}")
        if offset + size > end:
            raise ValueError("truncated OpenFlow port description")
        (number,) = struct.unpack_from(number_format, message, offset)
        if 0 < number < limit:
            ports[_port_name(message, offset + name_at)] = number
        offset += size
    return ports, more


# -- errors --------------------------------------------------------------------------------


def error(version: int, type_: int, code: int, data: bytes = b"", xid: int = 0) -> bytes:
    """OFPT_ERROR (OF1.0 5.4.4, OF1.5.1 7.4.4): e.g. HELLO_FAILED with ASCII text as data."""
    return _message(version, OFPT_ERROR, _ERROR.pack(type_, code) + data, xid)


def parse_error(message: bytes) -> tuple[int, int, bytes]:
    """(type, code, data) of an OFPT_ERROR. For most errors `data` starts with the offending
    request (at least 64 bytes of it); for HELLO_FAILED it is ASCII text. OF1.2+ experimenter
    errors come back as (0xffff, exp_code, data after the experimenter id)."""
    head = header(message)
    if head.type != OFPT_ERROR:
        raise ValueError(f"not an OpenFlow ERROR (type {head.type})")
    end = min(head.length, len(message))
    if end < HEADER.size + _ERROR.size:
        raise ValueError("truncated OpenFlow ERROR")
    type_, code = _ERROR.unpack_from(message, HEADER.size)
    data_at = HEADER.size + _ERROR.size
    if type_ == OFPET_EXPERIMENTER and head.version >= OFP12:
        data_at += 4  # ofp_error_experimenter_msg: experimenter id before the data (OF1.5.1 7.4.4)
    return type_, code, bytes(message[data_at:end])


# Names from the specifications' `enum ofp_error_type` and code enums (OF1.0 5.4.4, OF1.5.1
# 7.4.4; codes are only ever appended, so one table serves every version). Types 0-2 are the
# same in all versions; from 3 on 1.0 differs (there 3 is FLOW_MOD_FAILED, 4 PORT_MOD_FAILED).
_ERROR_TYPES_10 = {0: "hello failed", 1: "bad request", 2: "bad action", 3: "flow mod failed",
                   4: "port mod failed", 5: "queue operation failed"}
_ERROR_TYPES_11 = {0: "hello failed", 1: "bad request", 2: "bad action", 3: "bad instruction",
                   4: "bad match", 5: "flow mod failed", 6: "group mod failed",
                   7: "port mod failed", 8: "table mod failed", 9: "queue operation failed",
                   10: "switch config failed", 11: "role request failed",
                   12: "meter mod failed", 13: "table features failed", 14: "bad property",
                   15: "async config failed", 16: "flow monitor failed", 17: "bundle failed",
                   0xFFFF: "experimenter error"}
_ERROR_CODES: dict[int, dict[int, str]] = {
    0: {0: "no common OpenFlow version (OFPHFC_INCOMPATIBLE)", 1: "permission denied (OFPHFC_EPERM)"},
    1: {0: "version not supported (OFPBRC_BAD_VERSION)", 1: "message type not supported (OFPBRC_BAD_TYPE)",
        2: "multipart type not supported (OFPBRC_BAD_MULTIPART)",
        3: "experimenter not supported (OFPBRC_BAD_EXPERIMENTER)",
        4: "experimenter type not supported (OFPBRC_BAD_EXP_TYPE)",
        5: "permission denied (OFPBRC_EPERM)", 6: "wrong message length (OFPBRC_BAD_LEN)",
        7: "buffer already used (OFPBRC_BUFFER_EMPTY)", 8: "unknown buffer (OFPBRC_BUFFER_UNKNOWN)",
        9: "bad table id (OFPBRC_BAD_TABLE_ID)", 10: "connection is a slave/secondary (OFPBRC_IS_SLAVE)",
        11: "no such port (OFPBRC_BAD_PORT)", 12: "invalid packet (OFPBRC_BAD_PACKET)",
        13: "multipart buffer overflow (OFPBRC_MULTIPART_BUFFER_OVERFLOW)"},
    2: {0: "action type not supported (OFPBAC_BAD_TYPE)", 1: "wrong action length (OFPBAC_BAD_LEN)",
        2: "experimenter not supported (OFPBAC_BAD_EXPERIMENTER)",
        3: "experimenter type not supported (OFPBAC_BAD_EXP_TYPE)",
        4: "invalid port (OFPBAC_BAD_OUT_PORT)", 5: "bad action argument (OFPBAC_BAD_ARGUMENT)",
        6: "permission denied (OFPBAC_EPERM)", 7: "too many actions (OFPBAC_TOO_MANY)",
        8: "bad queue (OFPBAC_BAD_QUEUE)", 9: "bad group (OFPBAC_BAD_OUT_GROUP)"},
}
_BAD_MATCH_CODES = {0: "match type not supported (OFPBMC_BAD_TYPE)", 1: "wrong match length (OFPBMC_BAD_LEN)",
                    6: "match field not supported (OFPBMC_BAD_FIELD)",
                    7: "bad match value (OFPBMC_BAD_VALUE)",
                    9: "match prerequisite missing (OFPBMC_BAD_PREREQ)",
                    10: "duplicate match field (OFPBMC_DUP_FIELD)"}


def error_text(type_: int, code: int, version: int = OFP13) -> str:
    """A short human text for an OFPT_ERROR, e.g. `bad request: no such port (OFPBRC_BAD_PORT)`."""
    types = _ERROR_TYPES_10 if version == OFP10 else _ERROR_TYPES_11
    kind = types.get(type_)
    if kind is None:
        return f"OpenFlow error type {type_:#x} code {code}"
    codes = _ERROR_CODES.get(type_, {})
    if version != OFP10 and type_ == 4:
        codes = _BAD_MATCH_CODES
    return f"{kind}: {codes.get(code, f'code {code}')}"


# -- framing -------------------------------------------------------------------------------


class Framer:
    """Cuts a byte stream into whole OpenFlow messages by their header length."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every message now complete (ValueError on a length below 8:
        the stream cannot be resynchronised after that)."""
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        offset, available = 0, len(buffer)
        while available - offset >= HEADER.size:
            length = (buffer[offset + 2] << 8) | buffer[offset + 3]
            if length < HEADER.size:
                raise ValueError(f"OpenFlow header claims {length} bytes, "
                                 f"below the header's own {HEADER.size}")
            if available - offset < length:
                break
            messages.append(bytes(buffer[offset:offset + length]))
            offset += length
        del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes held back until their message is complete."""
        return len(self._buffer)
