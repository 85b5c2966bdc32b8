"""Parse a domain XML document that may come from anyone (a hook's stdin, a file, a socket).

libvirt never emits a DTD or entities, so any `<!DOCTYPE` or `<!ENTITY` is refused before the
parser sees it: no entity expansion (billion laughs), no external entity fetched. Documents are
capped in size; the biggest real domain XML is far below the cap.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from rarp_announce.errors import InputError
from rarp_announce.names import one_line

MAX_XML_BYTES = 4 * 1024 * 1024
_SLICE = 64 * 1024  # characters fed to the parser at once; see _parse_in_slices
_DECLARATIONS = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_domain(xml: str | bytes) -> ET.Element:
    """The `<domain>` root element, or InputError in one line saying what is wrong."""
    if isinstance(xml, (bytes, bytearray, memoryview)):
        data = bytes(xml)
        if len(data) > MAX_XML_BYTES:
            raise InputError(f"domain XML is {len(data)} bytes: larger than the {MAX_XML_BYTES}-byte limit")
        try:
            # libvirt always writes UTF-8; decoding here means an encoding declaration
            # (UTF-16, UTF-7, ...) cannot smuggle a DOCTYPE past the check below.
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"domain XML is not UTF-8 (byte {exc.start}): libvirt writes UTF-8") from None
    elif isinstance(xml, str):
        text = xml
        if len(text) > MAX_XML_BYTES:
            raise InputError(f"domain XML is {len(text)} characters: larger than the {MAX_XML_BYTES}-byte limit")
    else:
        raise InputError(f"domain XML must be text, got {type(xml).__name__}")
    match = _DECLARATIONS.search(text)
    if match:
        raise InputError(
            f"domain XML contains <!{match.group(1).upper()}: refused (entities and DTDs are never in "
            "libvirt's XML and can expand without bound or read files)"
        )
    if "\x00" in text:
        raise InputError("domain XML contains a NUL character: not XML")
    try:
        root = _parse_in_slices(text)
    except ET.ParseError as exc:
        raise InputError(f"malformed domain XML: {one_line(str(exc))}") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed domain XML: {one_line(str(exc)) or type(exc).__name__}") from None
    if root.tag != "domain":
        raise InputError(f"not a libvirt domain XML: the root element is <{_shown(root.tag)}>, expected <domain>")
    return root


def _parse_in_slices(text: str) -> ET.Element:
    """ET.fromstring, fed in slices: one fromstring() of megabytes is a single C call that holds
    the GIL for a quarter second, so a parse run in a worker thread would still stop the event
    loop; between slices the interpreter hands the GIL over (sys.getswitchinterval)."""
    parser = ET.XMLParser()
    for start in range(0, len(text), _SLICE):
        parser.feed(text[start:start + _SLICE])
    root: ET.Element = parser.close()
    return root


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
