"""Writing report lines to a pipe that may close: frames matter more than their report."""

from __future__ import annotations

import os
from typing import TextIO


def emit_line(stream: TextIO, text: str) -> bool:
    """Write one line and flush; False when the reader has gone (`... | head`), never an error."""
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except BrokenPipeError:
        _mute(stream)
        return False


def _mute(stream: TextIO) -> None:
    # Python's own flush at exit would fail again; the remedy its docs give (signal module,
    # "Note on SIGPIPE") is pointing the descriptor at /dev/null.
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
