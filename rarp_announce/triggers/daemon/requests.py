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
from typing import TYPE_CHECKING, Any


from rarp_announce.errors import InputError
from rarp_announce.names import canonical_uuid, check_uuid
from rarp_announce.resolve.domxml import parse_domain

if TYPE_CHECKING:
    from rarp_announce.triggers.daemon.service import Daemon

OPS = ("ping", "status", "handoff", "claimed")
MAX_UNCONFIRMED = 1024  # hand-offs libvirt has not confirmed yet (a host migrates in far fewer)


class Requests:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "status":
            return {"ok": True, "status": self.daemon.status()}
        if op == "handoff":
            return await self._handoff(request)
        if op == "claimed":
            try:
                uuid = check_uuid(_string(request, "uuid", "claimed"), '"uuid"')
            except InputError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "claimed": uuid in self.daemon.table.entries}
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
        table = self.daemon.table
        current = table.entries.get(uuid)
        if current is not None and current.phase == "incoming" and current.xml == xml:
            return {"ok": True}  # the STARTED/MIGRATED event got here first with the same XML
        refused = self._too_many(uuid)  # again: others may have been accepted during the parse
        if refused is not None:
            return refused
        source = str(request.get("source") or "handoff")[:20]
        # Prepared by a task: the hook waits for this answer, and libvirt waits for the hook.
        table.expect_soon(uuid, domain[:200], xml=xml, source=source,
                          expire_after=self.daemon.config.daemon.handoff_expiry)
        self.daemon.counters["handoffs"] += 1
        return {"ok": True}

    def _too_many(self, uuid: str) -> dict[str, Any] | None:
        """A refusal when MAX_UNCONFIRMED hand-offs wait already (this domain's own not counted:
        a new hand-off replaces it)."""
        waiting = sum(1 for e in self.daemon.table.entries.values()
                      if e.phase != "arrived" and not e.confirmed and e.uuid != uuid)
        if waiting >= MAX_UNCONFIRMED:
            return {"ok": False, "error": f"{waiting} hand-offs wait for a migration already: refused"}
        return None


def _string(request: dict[str, Any], key: str, op: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f'{op} needs a non-empty string "{key}"')
    return value
