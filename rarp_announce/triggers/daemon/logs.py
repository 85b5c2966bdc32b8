"""The daemon's log: one line per announced target (domain, MAC, device, VLAN, trigger), text or JSON.

Lines go to stderr, which systemd's journal stamps and keeps; JSON lines suit log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import weakref
from typing import TextIO

from rarp_announce.announce.arrivals import Arrival, Observer
from rarp_announce.errors import InputError
from rarp_announce.model import FrameEvent, RefusedAddress, Resolution, Target
from rarp_announce.names import one_line

LOGGER = "rarp_announce.daemon"
FORMATS = ("text", "json")


def _reason(record: logging.LogRecord) -> str | None:
    """An exception's type and message, on one line: the reason a log line must carry."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    error = record.exc_info[1]
    return one_line(f"{type(error).__name__}: {error}")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        reason = _reason(record)
        if reason:
            line["error"] = reason
        return json.dumps(line, separators=(",", ":"), default=str)


class _TextFormatter(logging.Formatter):
    """`TIME level message key=value ...`: one line per record, whatever a value holds."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        text = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {_one_line(record.getMessage())}"
        fields = dict(getattr(record, "fields", {}))
        reason = _reason(record)
        if reason:
            fields["error"] = reason
        if fields:
            text += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return text


def _one_line(text: str) -> str:
    # A domain name (or anything a guest's owner chose) with a newline must not forge a line.
    return text if text.isprintable() else json.dumps(text)[1:-1]


def _text_value(value: object) -> str:
    text = "-" if value is None else str(value)
    if not text or not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


def setup_logging(log_format: str, stream: TextIO | None = None) -> logging.Logger:
    if log_format not in FORMATS:
        raise InputError(f"invalid log format {log_format!r}: expected text or json")
    # Every module logs under the package's logger (resolve, transport, announce, daemon):
    # one handler there gives the daemon one format for all of them.
    package = logging.getLogger("rarp_announce")
    for handler in list(package.handlers):
        package.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    return logging.getLogger(LOGGER)


def log_event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    logger.log(level, message, extra={"fields": fields})


def log_announcement(logger: logging.Logger, target: Target, *, domain: str | None, trigger: str) -> None:
    fields: dict[str, object] = dict(domain=domain, mac=target.mac, device=target.device, vlan=target.vlan,
                                     kind=target.kind, interface=target.interface or None, trigger=trigger)
    if target.ovs is not None:
        fields.update(port=target.ovs.name, ofport=target.ovs.ofport, vlan_source=target.vlan_source)
    if target.addresses:
        fields["addresses"] = ",".join(address.ip for address in target.addresses)
    log_event(logger, logging.INFO, "announce", **fields)


def log_fdb_step(logger: logging.Logger, event: FrameEvent) -> None:
    """Announcer observer: one line per bridge FDB step (frames are counted, not logged)."""
    if event.type != "fdb" or event.target.bridge_port is None:
        return
    port = event.target.bridge_port
    fields: dict[str, object] = dict(domain=event.domain, mac=event.target.mac, bridge=port.bridge, port=port.name,
                                     vlan=event.target.vlan)
    if event.error is not None:
        log_event(logger, logging.WARNING, "bridge FDB not written; frames sent anyway", **fields, reason=event.error)
    else:
        log_event(logger, logging.INFO, "bridge FDB", **fields, done=event.detail)


def first_time_refused(seen: weakref.WeakKeyDictionary[Arrival, set[RefusedAddress]], arrival: Arrival,
                       resolution: Resolution) -> list[RefusedAddress]:
    """The refused addresses of `resolution` not yet reported for this arrival: the `resolved`
    event comes again whenever anything of the resolution changes (a retry, a port rewired),
    and a refusal is said (and counted) once per arrival. Forgotten with the arrival."""
    said = seen.setdefault(arrival, set())
    fresh = [refused for refused in resolution.refused if refused not in said]
    said.update(fresh)
    return fresh


class LogObserver(Observer):
    """One line per announced MAC, and one per problem: what it is, and what happens next."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self._refused: weakref.WeakKeyDictionary[Arrival, set[RefusedAddress]] = weakref.WeakKeyDictionary()

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None:
        for skipped in resolution.skipped:
            log_event(self.log, logging.INFO, "not announced", domain=arrival.name, mac=skipped.mac,
                      kind=skipped.kind, interface=skipped.interface, reason=skipped.reason)
        for note in resolution.notes:
            log_event(self.log, logging.WARNING, "note", domain=arrival.name, note=note)
        for refused in first_time_refused(self._refused, arrival, resolution):
            log_event(self.log, logging.WARNING, "address refused", domain=arrival.name, mac=refused.mac, ip=refused.ip,
                      source=refused.source, reason=refused.reason, detail=refused.detail)

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        log_event(self.log, logging.ERROR, "cannot resolve domain", domain=arrival.name, error=error)

    def announced(self, arrival: Arrival, targets: list[Target], trigger: str, latency: float | None) -> None:
        for target in targets:
            log_announcement(self.log, target, domain=arrival.name, trigger=trigger)

    def waiting(self, arrival: Arrival, target: Target, reason: str, timeout: float) -> None:
        log_event(self.log, logging.WARNING, "not ready; waiting", domain=arrival.name, mac=target.mac,
                  route=target.route, vlan=target.vlan, reason=reason, timeout=timeout)

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        log_event(self.log, logging.INFO, "ready", domain=arrival.name, mac=target.mac, route=target.route,
                  vlan=target.vlan, waited=round(waited, 3), was=reason)

    def guest_announced(self, arrival: Arrival, problem: str | None) -> None:
        if problem is None:
            log_event(self.log, logging.INFO, "guest announce: QEMU took announce-self", domain=arrival.name)
        else:
            log_event(self.log, logging.WARNING, "guest announce failed", domain=arrival.name, reason=problem)

    def expired(self, arrival: Arrival, after: float) -> None:
        log_event(self.log, logging.WARNING, "hand-off expired: no migration of it started here", domain=arrival.name,
                  uuid=arrival.uuid, after=after)

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        log_event(self.log, logging.ERROR, "gave up", domain=arrival.name, mac=target.mac, route=target.route,
                  vlan=target.vlan, reason=reason, after=after)
