"""The daemon's log: one line per announced target (domain, MAC, device, VLAN, trigger), text or JSON.

Lines go to stderr, which systemd's journal stamps and keeps; JSON lines suit log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from rarp_announce.announcer import Target
from rarp_announce.errors import InputError

LOGGER = "rarp_announce.daemon"
FORMATS = ("text", "json")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        text = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.getMessage()}"
        fields = getattr(record, "fields", {})
        if fields:
            text += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return text


def _text_value(value: object) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text) if (" " in text or not text) else text


def setup_logging(log_format: str, stream: TextIO | None = None) -> logging.Logger:
    if log_format not in FORMATS:
        raise InputError(f"invalid log format {log_format!r}: expected text or json")
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def log_event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    logger.log(level, message, extra={"fields": fields})


def log_announcement(logger: logging.Logger, target: Target, *, domain: str | None, trigger: str) -> None:
    log_event(
        logger,
        logging.INFO,
        "announce",
        domain=domain,
        mac=target.mac,
        device=target.device,
        vlan=target.vlan,
        kind=target.kind,
        interface=target.interface or None,
        trigger=trigger,
    )
