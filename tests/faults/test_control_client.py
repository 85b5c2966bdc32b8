"""Row 4: the control client (rarp-announce status, the hook, the waiter's daemon_took) against
peers that are not a well-behaved daemon: each costs one line within the deadline, never a hang."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from rarp_announce.control import MAX_ANSWER, request
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.triggers.waiter import daemon_took
from tests.conftest import CLI, ROOT

UUID = "0d15ea5e-0000-4000-8000-000000000004"


def _flood(conn: socket.socket, stop: threading.Event) -> None:
    conn.recv(65536)
    chunk = b"x" * 65536
    sent = 0
    while not stop.is_set() and sent < 4 * MAX_ANSWER:  # bounded: the client gives up at MAX_ANSWER
        try:
            sent += conn.send(chunk)
        except OSError:
            return


def _drip(conn: socket.socket, stop: threading.Event) -> str | None:
    conn.recv(65536)
    for _ in range(100):  # 10 s at most
        stopping = stop.wait(0.1)
        try:
            conn.send(b" ")
        except OSError:
            return "client left"  # the client gave up while bytes were still coming
        if stopping:
            return "client still there"
    return "dripped to the end"


def _reset(conn: socket.socket, stop: threading.Event) -> None:
    # Close with the request unread: a Unix stream peer then gets ECONNRESET.
    select.select([conn], [], [], 5)


PEERS: dict[str, Callable[[socket.socket, threading.Event], str | None]] = {"flood": _flood, "drip": _drip, "reset": _reset}


@contextlib.contextmanager
def fake_daemon(path: str, behaviour: Callable[[socket.socket, threading.Event], str | None]) -> Iterator[list[str | None]]:
    """A peer on `path`; yields what each connection's behaviour said about its end."""
    outcomes: list[str | None] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                outcomes.append(behaviour(conn, stop))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(10)
        server.close()
        assert not thread.is_alive()


@pytest.mark.parametrize("peer", list(PEERS))
def test_request_against_a_bad_peer_is_one_line_in_time(tmp_path, peer) -> None:
    path = str(tmp_path / "fake.sock")
    with fake_daemon(path, PEERS[peer]) as outcomes:
        with pytest.raises(AnnounceError) as caught:
            request(path, {"op": "ping"}, timeout=1.0)
    message = str(caught.value)
    assert "\n" not in message and "None" not in message and len(message) < 300, message
    # No clock: a per-read deadline would have waited for the drip's end (10 s, then EOF, another
    # message); the overall deadline is proven by the message and by the client leaving mid-drip.
    expected = {"flood": f"more than {MAX_ANSWER} bytes", "drip": "did not answer within 1 s",
                "reset": "cannot reach the daemon"}[peer]
    assert expected in message
    if peer == "drip":
        assert outcomes == ["client left"], outcomes


@pytest.mark.parametrize("peer", list(PEERS))
def test_daemon_took_says_no_against_a_bad_peer(tmp_path, peer) -> None:
    """The hook's waiter asks before announcing itself: a bad answer means "announce here"."""
    path = str(tmp_path / "fake.sock")
    with fake_daemon(path, PEERS[peer]) as outcomes:
        assert daemon_took(path, UUID) is False
    if peer == "drip":  # it gave up on its own deadline, bytes still coming (no clock needed)
        assert outcomes == ["client left"], outcomes


def test_a_control_socket_path_over_107_bytes_is_one_clear_line(tmp_path) -> None:
    path = str(tmp_path / ("s" * 120 + ".sock"))
    with pytest.raises(InputError) as caught:
        request(path, {"op": "ping"})
    message = str(caught.value)
    assert "107" in message and "None" not in message and "\n" not in message
    assert daemon_took(path, UUID) is False
    for argv in ([*CLI, "status", "--control-socket", path],
                 [*CLI, "daemon", "--connect", "test:///default", "--control-socket", path,
                  "--state-dir", str(tmp_path / "state"), "--config", "/dev/null"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)  # generous: start-up under load
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and "at most 107" in lines[0] and "None" not in lines[0], lines
