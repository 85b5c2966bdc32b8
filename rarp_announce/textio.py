"""Writing report lines to an output that may close or fill up: frames matter more than their report.

A reader that goes away (`... | head`, stdout closed) silences the report and nothing else;
an output that fails otherwise (a full disk) is remembered, so the command can say so in one
line at the end, after every frame was sent.
"""

from __future__ import annotations

import errno
import os
from typing import TextIO

_failures: list[OSError] = []


def emit_line(stream: TextIO | None, text: str) -> bool:
    """Write one line and flush; False when it could not be written, never an error."""
    if stream is None:  # started with that descriptor closed (`>&-`)
        return False
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except BrokenPipeError:
        mute(stream)
        return False
    except (OSError, ValueError) as exc:  # ValueError: the stream object was closed
        if isinstance(exc, OSError) and exc.errno != errno.EBADF:
            _failures.append(exc)
        mute(stream)
        return False


def output_failure() -> OSError | None:
    """The first write to an output that failed for a reason a person must hear (a full disk)."""
    return _failures[0] if _failures else None


def mute(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null, dropping what it still buffers.

    Python's own flush at exit would fail again; the remedy its docs give (signal module,
    "Note on SIGPIPE") is pointing the descriptor at /dev/null.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return  # no descriptor left (EMFILE): the output stays broken, but this never raises
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)
