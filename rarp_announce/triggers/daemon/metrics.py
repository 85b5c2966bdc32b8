"""Prometheus metrics of one daemon, served over HTTP from a thread of their own.

Each daemon gets its own registry, so tests and benchmarks can run several in one process.
The HTTP server never blocks the event loop, and nothing a peer does can take the daemon's
descriptors or blind the endpoint: one thread waits on every connection with a selector, at
most MAX_CLIENTS are open at a time, each gets IDLE_TIMEOUT seconds in all (not per byte) to
send its request and as long to take the answer, and when all are taken the oldest one still
waiting for its request is closed for the newcomer (a scraper sends its request at once; idle
connections only ever wait). prometheus-client's own server kept a thread per connection for as
long as the client liked, so 1,020 idle connections took every descriptor under the usual limit
of 1024 and the control socket then failed; a first bounded version refused newcomers while 16
idle connections waited, so a trickle of idle connections kept every scrape out.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from rarp_announce import __version__
from rarp_announce.announce.arrivals import Arrival, Observer
from rarp_announce.config import parse_address
from rarp_announce.errors import InputError
from rarp_announce.model import FrameEvent, RefusedAddress, Resolution, Target
from rarp_announce.triggers.daemon.logs import first_time_refused

# Event-to-first-frame latency is expected well under a millisecond: buckets start at 50 µs.
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.announcements = Counter(
            "rarp_announce_announcements", "Announcements started, by trigger and libvirt interface type.",
            ["trigger", "kind"], registry=self.registry
        )
        self.frames = Counter(
            "rarp_announce_frames_sent", "Frames sent, by libvirt interface type and frame type (rarp, garp, na).",
            ["kind", "type"], registry=self.registry
        )
        self.failures = Counter(
            "rarp_announce_failures", "Failures, by reason.", ["reason"], registry=self.registry
        )
        self.bridge_fdb = Counter(
            "rarp_announce_bridge_fdb",
            "Linux bridge FDB steps before a vNIC's first frame: written (the MAC pointed at the guest's "
            "port), kept (already there, or a static entry left alone), refused (see failures{reason=\"bridge_fdb\"}).",
            ["outcome"], registry=self.registry
        )
        self.refused = Counter(
            "rarp_announce_addresses_refused",
            "Addresses a guest-vouched source (arp, agent) named and the policy refused, once per arrival, "
            "by source and reason (not_allowed, host_address, next_hop, other_mac, other_guest).",
            ["source", "reason"], registry=self.registry
        )
        self.latency = Histogram(
            "rarp_announce_first_frame_latency_seconds",
            "From a libvirt event reaching the daemon to the first round of frames having left.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connected = Gauge(
            "rarp_announce_libvirt_connected", "1 while the libvirt connection is up.", registry=self.registry
        )
        self.reconnects = Counter(
            "rarp_announce_libvirt_reconnects", "libvirt connections re-established after a loss.", registry=self.registry
        )
        self.in_flight = Gauge(
            "rarp_announce_schedules_in_flight", "Announcement schedules still running.", registry=self.registry
        )
        self.pending = Gauge(
            "rarp_announce_targets_pending", "Targets waiting for their device or OVS port to become ready.",
            registry=self.registry
        )
        self.wait = Histogram(
            "rarp_announce_ready_wait_seconds",
            "From the arrival to a target's route being ready (an OVS port wired, a device up), by route type.",
            ["route"], buckets=_WAIT_BUCKETS, registry=self.registry,
        )
        self.build_info = Gauge(
            "rarp_announce_build_info", "Always 1; the label says which rarp-announce runs.", ["version"],
            registry=self.registry,
        )
        self.build_info.labels(__version__).set(1)
        self._frame_children: dict[tuple[str, str], Counter] = {}
        self._failure_children: dict[str, Counter] = {}
        self._server: _MetricsServer | None = None
        self._thread: threading.Thread | None = None

    def observe_frame(self, event: FrameEvent) -> None:
        """Announcer observer: count each frame by interface type, or its failure by reason."""
        if event.type == "fdb":
            outcome = "refused" if event.error is not None else "written" if (event.detail or "").startswith("set ") else "kept"
            self.bridge_fdb.labels(outcome).inc()
            if event.error is not None:
                self.failure("bridge_fdb")
            return
        if event.error is None:
            labels = (event.target.kind, event.type)
            child = self._frame_children.get(labels)
            if child is None:
                child = self._frame_children[labels] = self.frames.labels(*labels)
            child.inc()
        else:
            self.failure(_reason_label(event.error))

    def observer(self) -> "MetricsObserver":
        return MetricsObserver(self)

    def failure(self, reason: str) -> None:
        child = self._failure_children.get(reason)
        if child is None:
            child = self._failure_children[reason] = self.failures.labels(reason)
        child.inc()

    def serve(self, address: str) -> None:
        host, port = parse_address(address)
        if is_wildcard(host):
            # The endpoint has no authentication: what it tells (guests, MACs, bridges, VLANs,
            # failures) is then open to every network the host is on, the guests' own included.
            _log.warning("metrics on %s listen on every address of this host: they are then reachable from every "
                         "network the host is on; bind to one address instead ([daemon] metrics or --metrics), "
                         "such as 127.0.0.1:%d or the management network's address", address, port)
        try:
            self._server = _MetricsServer(host, port, self.registry)
        except OSError as exc:
            raise InputError(f"cannot serve metrics on {address}: {exc.strerror}; choose a free ADDR:PORT") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()  # wakes the thread at once: no poll interval to wait out
            if self._thread is not None:
                self._thread.join(1.0)
                self._thread = None


def is_wildcard(host: str) -> bool:
    """True for an address that binds every address of the host: 0.0.0.0, ::, "" and their spellings."""
    import ipaddress

    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: bound to whatever it resolves to


MAX_CLIENTS = 64
IDLE_TIMEOUT = 5.0  # seconds from the connection to a complete request, and again to take the answer
MAX_REQUEST_HEAD = 8192  # a scrape's request line and headers are a few hundred bytes
BACKLOG = 1024  # socketserver's 5 (or 128) let a burst overflow the queue: a scraper's SYN dropped, retried a second later
_PATHS = ("/metrics", "/")
_log = logging.getLogger("rarp_announce.daemon")


def _client_budget() -> int:
    """MAX_CLIENTS, or an eighth of the descriptor limit when that is smaller: the rest belong
    to the control socket, libvirt, OVSDB, OpenFlow and the packet sockets."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENTS
    return max(2, min(MAX_CLIENTS, soft // 8))


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None  # set once the request is complete: the bytes still to send


class _MetricsServer:
    """GET /metrics (or /): the registry in Prometheus's text format; anything else an error.

    One thread, one selector, non-blocking sockets: a connection costs a descriptor and a few
    bytes, never a thread, and none can hold another up.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.max_clients = _client_budget()
        self.timed_out = 0  # peers closed for taking too long (the fault tests count them)
        self._clients: dict[socket.socket, _Client] = {}  # oldest first
        self._closing = False
        self._accept_paused_until: float | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(BACKLOG)
            self._listener.setblocking(False)
            self._wake_in, self._wake_out = socket.socketpair()
        except OSError:
            self._listener.close()
            raise
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_in, selectors.EVENT_READ)

    @property
    def address(self) -> tuple[Any, ...]:
        return tuple(self._listener.getsockname())

    def close(self) -> None:
        """From any thread: the serving thread closes every socket and returns."""
        self._closing = True
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass

    def serve_forever(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select(self._timeout()):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_in:
                        self._drain_wake()
                    else:
                        self._event(sock, events)  # type: ignore[arg-type]
                self._expire()
        except Exception:  # a bug here must cost the endpoint, never the daemon
            _log.exception("the metrics endpoint stopped")
        finally:
            for sock in list(self._clients):
                self._drop(sock)
            self._selector.close()
            for sock in (self._listener, self._wake_in, self._wake_out):
                sock.close()

    # ---- connections -----------------------------------------------------------------------

    def _timeout(self) -> float | None:
        deadlines = [client.deadline for client in self._clients.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _accept(self) -> None:
        for _ in range(BACKLOG):  # then the other sockets get their turn
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # No descriptor to take it with: free one, or stop accepting for a moment
                    # (left in the queue, the connection would wake the selector in a busy loop).
                    if not self._evict_oldest_waiting():
                        self._pause_accepting()
                    return
                continue  # ECONNABORTED and the like: that peer is gone already
            sock.setblocking(False)
            if len(self._clients) >= self.max_clients and not self._evict_oldest_waiting():
                sock.close()  # every slot is sending an answer: the newcomer retries
                continue
            self._clients[sock] = _Client(sock, time.monotonic() + IDLE_TIMEOUT)
            self._selector.register(sock, selectors.EVENT_READ)

    def _evict_oldest_waiting(self) -> bool:
        for sock, client in self._clients.items():
            if client.answer is None:
                self._drop(sock)
                return True
        return False

    def _pause_accepting(self) -> None:
        self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + 0.2

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ)
        for sock, client in list(self._clients.items()):
            if client.deadline <= now:
                self.timed_out += 1
                self._drop(sock)

    def _drain_wake(self) -> None:
        try:
            self._wake_in.recv(4096)
        except OSError:
            pass

    def _drop(self, sock: socket.socket) -> None:
        if self._clients.pop(sock, None) is not None:
            self._selector.unregister(sock)
        sock.close()

    def _event(self, sock: socket.socket, events: int) -> None:
        client = self._clients.get(sock)
        if client is None:
            return
        if client.answer is None:
            self._receive(client)
        else:
            self._send(client)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client.sock)
            return
        if not data:
            self._drop(client.sock)  # it left before asking
            return
        client.received += data
        if b"\r\n\r\n" in client.received or b"\n\n" in client.received:
            self._respond(client, *self._answer(bytes(client.received)))
        elif len(client.received) > MAX_REQUEST_HEAD:
            self._respond(client, 431, b"request header too large\n", "text/plain; charset=utf-8")

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        words = head.split(b"\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", "text/plain; charset=utf-8"
        method, target = words[0], words[1].split(b"?", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return 405, b"only GET\n", "text/plain; charset=utf-8"
        if target not in _PATHS:
            return 404, b"not found: try /metrics\n", "text/plain; charset=utf-8"
        try:
            body = generate_latest(self.registry)
        except Exception:  # a collector that failed must not stop the endpoint
            _log.exception("collecting metrics failed")
            return 500, b"collecting metrics failed\n", "text/plain; charset=utf-8"
        return 200, body if method == b"GET" else b"", CONTENT_TYPE_LATEST

    def _respond(self, client: _Client, code: int, body: bytes, content_type: str) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[code]
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        client.answer = memoryview(head + body)
        client.received = bytearray()
        client.deadline = time.monotonic() + IDLE_TIMEOUT
        self._selector.modify(client.sock, selectors.EVENT_WRITE)
        self._send(client)

    def _send(self, client: _Client) -> None:
        assert client.answer is not None
        try:
            sent = client.sock.send(client.answer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client.sock)
            return
        client.answer = client.answer[sent:]
        if not client.answer:
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(client.sock)


def _reason_label(error: str) -> str:
    # Bounded label values: a free-text reason would make a new time series per device name.
    for needle, label in (
        ("down", "device_down"),
        ("no such device", "device_missing"),
        ("disappeared", "device_missing"),
        ("queue full", "queue_full"),
        ("permission", "permission"),
        ("root or CAP_NET_RAW", "permission"),
    ):
        if needle in error:
            return label
    return "send_failed"


class MetricsObserver(Observer):
    """The arrival table's events as counters, gauges and histograms."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._refused: weakref.WeakKeyDictionary[Arrival, set[RefusedAddress]] = weakref.WeakKeyDictionary()

    def resolved(self, arrival: Arrival, resolution: Resolution) -> None:
        for refused in first_time_refused(self._refused, arrival, resolution):
            self.metrics.refused.labels(refused.source, refused.reason).inc()

    def announced(self, arrival: Arrival, targets: list[Target], trigger: str, latency: float | None) -> None:
        for kind in {t.kind for t in targets}:
            self.metrics.announcements.labels(trigger, kind).inc()
        if latency is not None:
            self.metrics.latency.observe(latency)

    def resolve_failed(self, arrival: Arrival, error: str) -> None:
        self.metrics.failure("bad_xml")

    def ready(self, arrival: Arrival, target: Target, waited: float, reason: str) -> None:
        self.metrics.wait.labels("ovs" if target.ovs is not None else "device").observe(waited)

    def gave_up(self, arrival: Arrival, target: Target, reason: str, after: float) -> None:
        self.metrics.failure("wiring_timeout" if reason.startswith("not wired") else "gave_up")
