"""Report lines on a pipe whose reader goes away."""

from __future__ import annotations

import os

from rarp_announce.textio import emit_line


def test_emit_line_survives_a_reader_that_went_away() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        assert emit_line(stream, "first") is True
        assert os.read(read_end, 100) == b"first\n"
        os.close(read_end)  # like `| head -1` exiting
        assert emit_line(stream, "second") is False
        # the descriptor now points at /dev/null: later writes and the final flush succeed
        assert emit_line(stream, "third") is True
        assert os.readlink(f"/proc/self/fd/{stream.fileno()}") == "/dev/null"
    finally:
        stream.close()


def test_emit_line_never_raises_even_without_a_descriptor_to_mute_with(monkeypatch) -> None:
    """A failed write whose remedy (pointing the descriptor at /dev/null) fails too (EMFILE)."""
    import errno
    import io

    from rarp_announce import textio

    class Full(io.StringIO):
        def fileno(self) -> int:
            return 1

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    def no_descriptor(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(textio.os, "open", no_descriptor)  # restored by monkeypatch right after
    monkeypatch.setattr(textio, "_failures", [])
    assert textio.emit_line(Full(), "line") is False
    assert textio.output_failure().errno == errno.ENOSPC
