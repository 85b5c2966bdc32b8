"""Prometheus metrics of one daemon, served over HTTP from prometheus-client's own thread.

Each daemon gets its own registry, so tests and benchmarks can run several in one process;
the HTTP server runs in a daemon thread and never blocks the event loop.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rarp_announce.announcer import FrameEvent
from rarp_announce.errors import InputError

# Event-to-first-frame latency is expected well under a millisecond: buckets start at 50 µs.
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.announcements = Counter(
            "rarp_announce_announcements", "Announcements started, by trigger and libvirt interface type.",
            ["trigger", "kind"], registry=self.registry
        )
        self.frames = Counter(
            "rarp_announce_frames_sent", "Frames sent, by libvirt interface type.", ["kind"], registry=self.registry
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
            "rarp_announce_targets_pending", "Targets waiting for their device to become ready.", registry=self.registry
        )
        self._frame_children: dict[str, Counter] = {}
        self._failure_children: dict[str, Counter] = {}
        self._server = None

    def observe_frame(self, event: FrameEvent) -> None:
        """Announcer observer: count each frame by interface type, or its failure by reason."""
        if event.error is None:
            child = self._frame_children.get(event.target.kind)
            if child is None:
                child = self._frame_children[event.target.kind] = self.frames.labels(event.target.kind)
            child.inc()
        else:
            self.failure(_reason_label(event.error))

    def failure(self, reason: str) -> None:
        child = self._failure_children.get(reason)
        if child is None:
            child = self._failure_children[reason] = self.failures.labels(reason)
        child.inc()

    def serve(self, address: str) -> None:
        host, port = parse_address(address)
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise InputError(f"cannot serve metrics on {address}: {exc.strerror}; choose a free ADDR:PORT") from None

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits up to the server's 0.5 s poll: do it aside so SIGTERM exits at once.
            threading.Thread(target=_shut, args=(server,), name="metrics-stop", daemon=True).start()


def _shut(server) -> None:
    server.shutdown()
    server.server_close()


def parse_address(address: str) -> tuple[str, int]:
    """'ADDR:PORT' (IPv6 as [::1]:9100) -> (addr, port); InputError naming the fix otherwise."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"invalid metrics address {address!r}: expected ADDR:PORT, e.g. 127.0.0.1:9187")
    return host, int(port_text)


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
