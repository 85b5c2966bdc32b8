"""The `rarp-announce` command line: one module per group of commands, all on one typer app.

Only typer and the standard library load here: scapy and libvirt cost 0.4-2 s to import and
are imported inside the commands that need them, so --help stays fast.
"""

from __future__ import annotations

import sys

from rarp_announce.cli._common import app
from rarp_announce.cli import send as _send  # noqa: F401  (registers send, sniff)
from rarp_announce.cli import hook as _hook  # noqa: F401  (registers hook install|uninstall|status|wait)
from rarp_announce.cli import resolve as _resolve  # noqa: F401  (registers targets, domain)
from rarp_announce.cli import daemon as _daemon  # noqa: F401  (registers daemon, status)
from rarp_announce.cli import lab as _lab  # noqa: F401  (registers lab up|migrate|down|demo)
from rarp_announce.cli import doctor as _doctor  # noqa: F401  (registers doctor)
from rarp_announce.errors import AnnounceError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except AnnounceError as error:  # commands catch their own; this is the last net
        print(f"rarp-announce: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
