"""Row 3: idle TCP connections to the metrics endpoint cannot take the daemon's descriptors
(ulimit -n 1024): the control socket answers, a real scrape is served, idle ones are closed."""

from __future__ import annotations

import errno
import select
import socket
import time
import urllib.request

from rarp_announce.lab.netns import inside
from rarp_announce.triggers.daemon.metrics import IDLE_TIMEOUT

PORT = 9477
FLOOD = 1100


def _connect_all(count: int) -> list[socket.socket]:
    sockets = []
    try:
        for index in range(count):
            if index and index % 100 == 0:
                time.sleep(0.01)  # bursts of 100: what a flood is, without overflowing the kernel's queue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sockets.append(sock)
            code = sock.connect_ex(("127.0.0.1", PORT))  # never sends a byte
            assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of them the server has closed (EOF or reset seen by this end)."""
    poller = select.poll()
    by_fd = {}
    for sock in sockets:
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[sock.fileno()] = sock
    closed = 0
    for fd, _events in poller.poll(0):
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1  # reset
    return closed


def _scrape(timeout: float = 30.0) -> str:  # bounded generously: fails, never hangs
    return urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=timeout).read().decode()


def test_idle_connections_cannot_exhaust_descriptors(lab, daemon_proc) -> None:
    daemon = daemon_proc("--metrics", f"127.0.0.1:{PORT}", nofile=1024)
    daemon.wait_ready()
    with inside(lab.ns):  # the test's sockets in the daemon's netns
        assert "rarp_announce_libvirt_connected 1.0" in _scrape()
        fds_before, rss_before = daemon.fd_count(), daemon.rss_kib()
        flood = _connect_all(FLOOD)
        try:
            fds, rss = [], []
            for _ in range(10):  # one second of the flood
                time.sleep(0.1)
                fds.append(daemon.fd_count())
                rss.append(daemon.rss_kib())
            ping_started = time.monotonic()
            assert daemon.request({"op": "ping"}, timeout=30) == {"ok": True}
            ping = time.monotonic() - ping_started
            assert daemon.status()["connection"]["state"] == "connected"
            scrape_started = time.monotonic()
            try:
                body = _scrape()
                scrape_error = None
            except OSError as exc:
                body, scrape_error = "", repr(exc)
            scrape = time.monotonic() - scrape_started
            deadline = time.monotonic() + IDLE_TIMEOUT + 5
            closed = _closed_by_server(flood)
            while closed < FLOOD and time.monotonic() < deadline:
                time.sleep(0.2)
                closed = _closed_by_server(flood)
            closed_after = time.monotonic() - ping_started
            fds_after = daemon.fd_count()
        finally:
            for sock in flood:
                sock.close()
        print(f"\nFIGURE metrics-flood: {FLOOD} idle connections, ulimit -n 1024: daemon fds {fds_before} before, "
              f"max {max(fds)} during, {fds_after} after; RSS {rss_before / 1024:.1f} MiB before, max "
              f"{max(rss) / 1024:.1f} MiB during; ping {ping * 1000:.1f} ms; scrape {scrape * 1000:.1f} ms "
              f"({scrape_error or 'ok'}); {closed}/{FLOOD} closed by the server {closed_after:.1f} s after the flood")
        assert scrape_error is None and "rarp_announce_libvirt_connected 1.0" in body
        assert max(fds) < 200, "the flood must not take descriptors"
        assert closed == FLOOD, "every idle connection is closed by the server"
        assert fds_after <= fds_before + 2
        assert "rarp_announce_libvirt_connected 1.0" in _scrape()
    assert daemon.request({"op": "ping"}) == {"ok": True}
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr()


def test_under_a_tiny_descriptor_limit_the_flood_leaves_room_for_the_rest(lab, daemon_proc) -> None:
    """ulimit -n 64: the endpoint takes at most an eighth; ping, status and a scrape still work."""
    daemon = daemon_proc("--metrics", f"127.0.0.1:{PORT}", nofile=64)
    daemon.wait_ready()
    with inside(lab.ns):
        flood = _connect_all(300)
        try:
            time.sleep(0.5)
            fds = daemon.fd_count()
            assert daemon.request({"op": "ping"}, timeout=30) == {"ok": True}
            assert daemon.status()["connection"]["state"] == "connected"
            assert "rarp_announce_libvirt_connected 1.0" in _scrape()
        finally:
            for sock in flood:
                sock.close()
    print(f"\nFIGURE metrics-flood-64: 300 idle connections, ulimit -n 64: daemon fds {fds}")
    assert fds <= 64 // 8 + 20
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr()


class _Server:
    """The endpoint alone, in the lab's netns, on a port of its own."""

    def __init__(self, lab) -> None:
        import threading

        from prometheus_client import CollectorRegistry, Gauge

        from rarp_announce.triggers.daemon.metrics import _MetricsServer

        self.lab = lab
        registry = CollectorRegistry()
        Gauge("probe", "A value to find.", registry=registry).set(7)
        with inside(lab.ns):
            self.server = _MetricsServer("127.0.0.1", 0, registry)
        self.port = self.server.address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def exchange(self, payload: bytes, *, drip: float | None = None, limit: float = 10.0) -> tuple[bytes, bool]:
        """Send `payload` (a byte per `drip` seconds if given), read until the server closes;
        the answer, and whether the server closed before the payload was all sent."""
        with inside(self.lab.ns):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=limit)
        started = time.monotonic()
        data = b""
        cut = False
        try:
            for index in range(len(payload) if drip else 1):
                try:
                    sock.sendall(payload[index:index + 1] if drip else payload)
                except OSError:
                    cut = True
                    break
                if drip:
                    time.sleep(drip)
                    if time.monotonic() - started > limit:
                        break
            for _ in range(10_000):
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
        return data, cut

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_the_endpoint_answers_http_and_refuses_the_rest(lab, monkeypatch) -> None:
    from rarp_announce.triggers.daemon import metrics

    monkeypatch.setattr(metrics, "IDLE_TIMEOUT", 1.0)
    server = _Server(lab)
    try:
        answer, _ = server.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\nprobe 7.0\n" in answer
        head, _ = server.exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert server.exchange(b"GET /nope HTTP/1.1\r\n\r\n")[0].startswith(b"HTTP/1.1 404")
        assert server.exchange(b"POST /metrics HTTP/1.1\r\n\r\n")[0].startswith(b"HTTP/1.1 405")
        assert server.exchange(b"garbage\r\n\r\n")[0].startswith(b"HTTP/1.1 400")
        assert server.exchange(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)[0].startswith(b"HTTP/1.1 431")
        # Slowloris: a byte every 0.3 s never completes the request; the deadline is overall, not per
        # byte. No clock: a per-byte deadline would never expire while bytes keep coming (the client
        # gives up at its 10 s limit, 33 of the 130 bytes sent), so the server closing the
        # connection while bytes were still coming is what proves it.
        dripped, cut = server.exchange(b"GET /metrics HTTP/1.1\r\nHost: " + b"x" * 100, drip=0.3)
        assert dripped == b"" and cut
        assert server.server.timed_out >= 1
    finally:
        server.close()
