"""Prometheus metrics of one daemon, served over HTTP from prometheus-client's own thread.

Each daemon gets its own registry, so tests and benchmarks can run several in one process;
the HTTP server runs in a daemon thread and never blocks the event loop.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
