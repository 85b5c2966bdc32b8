"""Row 7: nothing a client sends stops the daemon's control socket or puts a traceback in its log."""

from __future__ import annotations

import json
import socket
import time

import pytest

DEPTH = 100_000


def _raw(path: str, payload: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        for _ in range(1000):  # bounded: one short answer line is expected
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


REQUESTS = {
    "array-in-object": b'{"op":"ping","x":' + b"[" * DEPTH + b"]" * DEPTH + b"}\n",
    "bare-array": b"[" * DEPTH + b"]" * DEPTH + b"\n",
    "objects": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH + b"\n",
    "unclosed": b'{"op":"status","x":' + b"[" * DEPTH + b"\n",
    "xml-nested": json.dumps({"op": "handoff", "domain": "deep", "uuid": "dee9dee9-0000-4000-8000-000000000007",
                              "xml": "<domain><name>deep</name><uuid>dee9dee9-0000-4000-8000-000000000007</uuid>"
                                     + "<a>" * DEPTH + "</a>" * DEPTH + "</domain>"}).encode() + b"\n",
}


def test_requests_nested_100k_deep_get_one_line_and_the_daemon_answers_on(lab, daemon_proc) -> None:
    daemon = daemon_proc()
    daemon.wait_ready()
    answers = {}
    for name, payload in REQUESTS.items():
        raw = _raw(daemon.control_socket, payload)
        assert raw.count(b"\n") == 1 and raw.endswith(b"\n"), (name, raw[:200])
        answers[name] = json.loads(raw)
        assert daemon.request({"op": "ping"}) == {"ok": True}, name
    for name in ("array-in-object", "bare-array", "objects"):
        assert answers[name]["ok"] is False and "nests too deeply" in answers[name]["error"], answers[name]
    assert answers["unclosed"]["ok"] is False and answers["unclosed"]["error"]
    # Deep XML is well-formed: accepted or refused, but in one line, and the preparation that
    # follows must not put a traceback in the log either.
    assert set(answers["xml-nested"]) <= {"ok", "error"}
    status = daemon.status()
    assert daemon.terminate() == 0
    assert daemon.proc.returncode == 0
    err = daemon.stderr()
    assert "Traceback" not in err and "RecursionError" not in err, err[-3000:]
    assert all(len(line) < 1000 for line in err.splitlines())
    assert status["connection"]["state"] == "connected"


def test_idle_clients_cannot_keep_the_hook_out(lab, daemon_proc) -> None:
    """200 connections that never send a byte: the oldest idle ones make room, so a hand-off or a
    status is still answered, and the daemon's descriptors stay bounded."""
    from rarp_announce.control import MAX_CLIENTS

    daemon = daemon_proc()
    daemon.wait_ready()
    before = daemon.fd_count()
    idle = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(sock)
            sock.connect(daemon.control_socket)
        time.sleep(0.3)
        during = daemon.fd_count()
        answers = [daemon.request({"op": "ping"}, timeout=2) for _ in range(5)]
        status = daemon.request({"op": "status"}, timeout=2)
    finally:
        for sock in idle:
            sock.close()
    print(f"\nFIGURE control-flood: 200 idle clients: daemon fds {before} before, {during} during")
    assert answers == [{"ok": True}] * 5
    assert status["ok"] is True
    assert during <= before + MAX_CLIENTS + 5
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr()
