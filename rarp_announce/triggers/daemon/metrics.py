"""Prometheus metrics of one daemon, served over HTTP from threads of their own.

Each daemon gets its own registry, so tests and benchmarks can run several in one process.
The HTTP server never blocks the event loop, and it is bounded: at most MAX_CLIENTS
connections at a time, each closed after IDLE_TIMEOUT seconds without a complete request;
more are closed at once. prometheus-client's own server keeps a thread per connection for
as long as the client likes, so 1,020 idle connections took every file descriptor under the
usual limit of 1024 and the control socket then failed.
"""

from __future__ import annotations

import http.server
import socket
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from rarp_announce.announce.arrivals import Arrival, Observer
from rarp_announce.config import parse_address
from rarp_announce.errors import InputError
from rarp_announce.model import FrameEvent, Target

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
        self._frame_children: dict[tuple[str, str], Counter] = {}
        self._failure_children: dict[str, Counter] = {}
        self._server = None

    def observe_frame(self, event: FrameEvent) -> None:
        """Announcer observer: count each frame by interface type, or its failure by reason."""
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
        try:
            self._server = _BoundedServer(host, port, self.registry)
        except OSError as exc:
            raise InputError(f"cannot serve metrics on {address}: {exc.strerror}; choose a free ADDR:PORT") from None
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits up to the server's 0.5 s poll: do it aside so SIGTERM exits at once.
            threading.Thread(target=_shut, args=(server,), name="metrics-stop", daemon=True).start()


def _shut(server: _BoundedServer) -> None:
    server.shutdown()
    server.server_close()


MAX_CLIENTS = 16
IDLE_TIMEOUT = 5.0


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /metrics (or /): the registry in Prometheus's text format; anything else 404."""

    server: _BoundedServer
    timeout = IDLE_TIMEOUT  # StreamRequestHandler applies it to the connection's socket

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass  # scrapes are not events worth a log line


class _BoundedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.refused = 0
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # closed at once: its descriptor is back
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


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
