"""What the daemon answers on its control socket (the protocol itself is rarp_announce.control).

- ping: is anyone there;
- status: what `rarp-announce status` shows;
- handoff: the libvirt hook's `migrate begin` on this host: the domain is coming; the table
  prepares it from the XML the hook got, exactly as for a STARTED/MIGRATED event;
- claimed: does the daemon follow this arrival? (a hook whose hand-off was answered late asks
  before its own waiter announces, so one arrival is announced once).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rarp_announce.errors import InputError
from rarp_announce.names import canonical_uuid, check_uuid
from rarp_announce.resolve.domxml import parse_domain

if TYPE_CHECKING:
    from rarp_announce.announce.arrivals import ArrivalTable

OPS = ("ping", "status", "handoff", "claimed")
MAX_UNCONFIRMED = 1024  # hand-offs libvirt has not confirmed yet (a host migrates in far fewer)


class Requests:
    """The control socket's operations, given what they use: `status` builds what `status`
    shows, `handoff_expiry` is read at each hand-off (a reload may change it)."""

    def __init__(
        self,
        table: ArrivalTable,
        counters: collections.Counter[str],
        *,
        status: Callable[[], dict[str, Any]],
        handoff_expiry: Callable[[], float],
    ) -> None:
        self._table = table
        self._counters = counters
        self._status = status
        self._handoff_expiry = handoff_expiry

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "status":
            return {"ok": True, "status": self._status()}
        if op == "handoff":
            return await self._handoff(request)
        if op == "claimed":
            try:
                uuid = check_uuid(_string(request, "uuid", "claimed"), '"uuid"')
            except InputError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "claimed": uuid in self._table.entries}
        return {"ok": False, "error": f"unknown op {str(op)[:40]!r}: expected {', '.join(OPS)}"}

    async def _handoff(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            domain = _string(request, "domain", "handoff")
            uuid = check_uuid(_string(request, "uuid", "handoff"), '"uuid"')
            xml = _string(request, "xml", "handoff")
            # Refused before the parse when too many wait already: a flood of hand-offs must not
            # cost a parse each.
            refused = self._too_many(uuid)
            if refused is not None:
                return refused
            # Parsed aside: a document of megabytes must not hold the loop (and every schedule).
            root = await asyncio.get_running_loop().run_in_executor(None, parse_domain, xml)
        except InputError as exc:
            return {"ok": False, "error": str(exc)}
        declared = canonical_uuid(root.findtext("uuid") or "")
        if declared is not None and declared != uuid:
            return {"ok": False, "error": f"uuid {uuid} does not match the XML's <uuid> {declared}"}
        current = self._table.entries.get(uuid)
        if current is not None and current.phase == "incoming" and current.xml == xml:
            return {"ok": True}  # the STARTED/MIGRATED event got here first with the same XML
        refused = self._too_many(uuid)  # again: others may have been accepted during the parse
        if refused is not None:
            return refused
        source = str(request.get("source") or "handoff")[:20]
        # Prepared by a task: the hook waits for this answer, and libvirt waits for the hook.
        self._table.expect_soon(uuid, domain[:200], xml=xml, source=source,
                                expire_after=self._handoff_expiry())
        self._counters["handoffs"] += 1
        return {"ok": True}

    def _too_many(self, uuid: str) -> dict[str, Any] | None:
        """A refusal when MAX_UNCONFIRMED hand-offs wait already (this domain's own not counted:
        a new hand-off replaces it)."""
        waiting = sum(1 for e in self._table.entries.values()
                      if e.phase != "arrived" and not e.confirmed and e.uuid != uuid)
        if waiting >= MAX_UNCONFIRMED:
            return {"ok": False, "error": f"{waiting} hand-offs wait for a migration already: refused"}
        return None


def _string(request: dict[str, Any], key: str, op: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f'{op} needs a non-empty string "{key}"')
    return value
