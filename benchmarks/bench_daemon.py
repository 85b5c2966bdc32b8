"""The daemon's figures: event-to-first-frame latency, frame lateness under a host evacuation,
idle cost, and how fast SIGTERM stops it.

Synthetic arrivals go through the same code path as real ones: libvirt test-driver domains
(test:///default, in-process) and the daemon's own libvirt lifecycle callback, called with
libvirt's event constants. Frames are captured on the switch side of the host's uplink veth
in a netns made here, and timed by the kernel's receive timestamps (SO_TIMESTAMPNS), so a
figure includes the whole path to the wire. Everything made here is removed at the end.

- latency: from just before the RESUMED/MIGRATED callback is called to the first frame of that
  domain seen on the wire; median and p99.
- lateness: each frame's arrival on the wire minus (its domain's event time + the frame's nominal
  offset in QEMU's schedule, 0/50/200/450/800 ms); p99 and max.
- idle: a real `rarp-announce daemon` process, connected and idle for IDLE_SECONDS (the issue
  says 30 s; 10 s here to keep `make bench` short): CPU used and resident memory.
- requests under stress: the same daemon's control-socket ping latency while it takes a 3.8 MB
  hand-off (59 vNICs trunking VLANs 1-4094) and while it reloads a 50k-deep config after SIGHUP
  (both parsed beside the loop: the tests prove pings are answered, these say how fast).
- SIGTERM with 10k arrivals: a daemon whose table holds STUFFED arrivals, every schedule under
  way (tests/faults/_stuffed_daemon.py, the fault test's own daemon): SIGTERM to exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._daemon import in_process_daemon, incoming, remove, resumed, running

SINGLE_TRIES = 100
STUFFED = 10_000
PING_EVERY_S = 0.02
MANY_DOMAINS = 1000
NICS = 2
SPREAD_S = 1.0  # the 1,000 arrivals come within one second
IDLE_SECONDS = 10.0
SO_RCVBUFFORCE = 33


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _macs(index: int) -> list[str]:
    return [f"52:54:{(index >> 8) & 0xff:02x}:{index & 0xff:02x}:{nic:02x}:01" for nic in range(NICS)]


def _xml(name: str, index: int) -> str:
    nics = "".join(
        f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>"
        + (f"<vlan><tag id='{100 + nic}'/></vlan>" if nic else "")
        + "</interface>"
        for nic, mac in enumerate(_macs(index))
    )
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>"
            f"<devices>{nics}</devices></domain>")


async def _evacuation(daemon, holder, capture, *, count: int, first_index: int, spread: float) -> dict:
    """`count` domains: prepare all (STARTED/MIGRATED), then resume them spread over `spread` s."""
    loop = asyncio.get_running_loop()
    domains = [(index, running(holder, _xml(f"bench{index}", index))) for index in range(first_index, first_index + count)]
    prepare_started = time.perf_counter()
    for _index, dom in domains:
        incoming(daemon, dom)
    while any(not a.prepared for a in daemon.table.entries.values()):
        await asyncio.sleep(0.005)
    prepare_s = time.perf_counter() - prepare_started
    event_wall: dict[str, float] = {}

    def resume(index: int, dom) -> None:
        event_wall[f"{index}"] = resumed(daemon, dom)

    start = loop.time() + 0.05
    for position, (index, dom) in enumerate(domains):
        loop.call_at(start + spread * position / count, resume, index, dom)
    await asyncio.sleep(0.06 + spread)
    await daemon.announcer.drain()
    offsets = [send.offset for send in daemon.config.schedule.sends()]
    frames = capture.frames(count=count * NICS * len(offsets), timeout=5.0)
    by_mac: dict[str, list[float]] = {}
    for captured in frames:
        mac = captured.frame[6:12].hex(":")
        by_mac.setdefault(mac, []).append(captured.time)
    latencies, lateness = [], []
    for index, _dom in domains:
        t_event = event_wall[f"{index}"]
        firsts = []
        for mac in _macs(index):
            times = sorted(by_mac.get(mac, []))
            if times:
                firsts.append(times[0])
            for offset, seen in zip(offsets, times):
                lateness.append(seen - (t_event + offset))
        if firsts:
            latencies.append(min(firsts) - t_event)
    for _index, dom in domains:
        remove(dom)
    return {"latencies": latencies, "lateness": lateness, "frames": len(frames),
            "expected": count * NICS * len(offsets), "prepare_s": prepare_s}


def _in_process(tmp: Path, ns: str, capture) -> tuple[dict, dict, list[float]]:
    from rarp_announce.config import Config
    from rarp_announce.triggers.daemon.logs import setup_logging
    from rarp_announce.lab.netns import inside

    log_file = open(tmp / "daemon.log", "w")
    setup_logging("text", log_file)  # the real one-line-per-MAC logging, into a file

    from rarp_announce.announce.arrivals import Observer
    from rarp_announce.config import OvsConfig

    class Latencies(Observer):
        """Event -> first round sent, inside the daemon (what its histogram metric counts)."""

        def __init__(self) -> None:
            self.values: list[float] = []

        def announced(self, arrival, targets, trigger, latency) -> None:
            if latency is not None:
                self.values.append(latency)

    async def scenario():
        latencies = Latencies()
        # No Open vSwitch on these domains' bridge: OVSDB is not read, as on a Linux-bridge host.
        async with in_process_daemon(Config(ovs=OvsConfig(db="")), tmp, [latencies]) as (daemon, holder):
            singles = {"latencies": [], "lateness": [], "frames": 0, "expected": 0}
            for attempt in range(SINGLE_TRIES):
                result = await _evacuation(daemon, holder, capture, count=1, first_index=20000 + attempt, spread=0)
                for key in ("latencies", "lateness"):
                    singles[key] += result[key]
                singles["frames"] += result["frames"]
                singles["expected"] += result["expected"]
            in_process = list(latencies.values)
            many = await _evacuation(daemon, holder, capture, count=MANY_DOMAINS, first_index=0, spread=SPREAD_S)
            return singles, many, in_process

    try:
        with inside(ns):
            return asyncio.run(scenario())
    finally:
        log_file.close()


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    return ticks / os.sysconf("SC_CLK_TCK"), rss_kib * 1024


def _idle(tmp: Path, ns: str) -> dict:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    notify.settimeout(30)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify.sock"), PYTHONPATH=str(root))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "rarp_announce", "daemon", "--connect", "test:///default",
         "--control-socket", str(tmp / "idle.sock"), "--state-dir", str(tmp / "idle-state"),
         "--metrics", "127.0.0.1:9478", "--config", str(_idle_config(tmp))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ready_started = time.perf_counter()
        notify.recv(4096)
        ready_s = time.perf_counter() - ready_started
        pid = _daemon_pid(proc.pid)
        time.sleep(1.0)
        cpu0, _ = _proc_cpu_rss(pid)
        wall0 = time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu1, rss = _proc_cpu_rss(pid)
        wall = time.monotonic() - wall0
        stress = _under_stress(str(tmp / "idle.sock"), tmp / "idle.toml", pid)
        stop_started = time.perf_counter()
        os.kill(pid, signal.SIGTERM)
        proc.wait(60)
        stop_s = time.perf_counter() - stop_started
        return {"cpu_percent": 100 * (cpu1 - cpu0) / wall, "rss": rss, "ready_s": ready_s, "stop_s": stop_s, **stress}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def _idle_config(tmp: Path) -> Path:
    path = tmp / "idle.toml"
    path.write_text("")  # the defaults, as without --config; a file only so that SIGHUP reads one
    return path


def _pinging(control_socket: str, during) -> list[float]:
    """Ping every PING_EVERY_S from a thread while `during()` runs, then as long as the callable
    it returns says the work goes on (bounded: 60 s); the latencies."""
    import threading

    from rarp_announce.control import request

    latencies: list[float] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set() and len(latencies) < 5000:
            started = time.perf_counter()
            request(control_socket, {"op": "ping"}, timeout=30)
            latencies.append(time.perf_counter() - started)
            stop.wait(max(0.0, PING_EVERY_S - (time.perf_counter() - started)))

    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    try:
        still_going = during()
        deadline = time.monotonic() + 60
        while still_going() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    return latencies


def _under_stress(control_socket: str, config: Path, pid: int) -> dict:
    """Ping latency during a 3.8 MB hand-off, then during a SIGHUP reload of a 50k-deep config."""
    from rarp_announce.control import request

    uuid = "b16b16b1-0000-4000-8000-00000000b16b"
    tags = "".join(f"<tag id='{vlan}'/>" for vlan in range(1, 4095))
    nics = "".join(
        f"<interface type='bridge'><mac address='52:54:00:7e:{i // 256:02x}:{i % 256:02x}'/>"
        f"<source bridge='br0'/><vlan trunk='yes'>{tags}</vlan><model type='virtio'/></interface>"
        for i in range(59)
    )
    xml = (f"<domain type='kvm'><name>trunks</name><uuid>{uuid}</uuid><memory unit='KiB'>65536</memory>"
           f"<os><type arch='x86_64'>hvm</type></os><devices>{nics}</devices></domain>")

    def handoff():
        answer = request(control_socket, {"op": "handoff", "domain": "trunks", "uuid": uuid, "xml": xml,
                                          "source": "hook"}, timeout=60)
        if answer != {"ok": True}:
            raise RuntimeError(f"hand-off refused: {answer}")
        answered = time.monotonic()
        return lambda: time.monotonic() < answered + 0.5  # and its preparation (59 vNICs resolved aside)

    handed = _pinging(control_socket, handoff)

    def counter() -> int:
        return request(control_socket, {"op": "status"}, timeout=30)["status"]["counters"].get("reload_failures", 0)

    good = config.read_text()
    config.write_text("[uplinks" + ".a" * 50_000 + "]\n")

    def reload():
        before = counter()
        os.kill(pid, signal.SIGHUP)
        return lambda: counter() <= before

    try:
        reloading = _pinging(control_socket, reload)
    finally:
        config.write_text(good)
    return {"handoff_pings": handed, "reload_pings": reloading}


def _stuffed(ns: str, tmp: Path, mode: str) -> dict:
    """The fault test's daemon with STUFFED arrivals (`mode` as there): READY, then SIGTERM to exit."""
    root = Path(__file__).resolve().parent.parent
    notify_path = tmp / f"stuffed-{mode}.notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(300)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(root))
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.faults._stuffed_daemon",
         str(tmp / f"stuffed-{mode}.sock"), str(tmp / f"stuffed-{mode}-state"), str(STUFFED), mode],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root,
    )
    try:
        notify.recv(4096)
        ready_s = time.perf_counter() - started
        time.sleep(1.0)  # the first burst's rounds (0.8 s) are out: the schedules wait for the next
        pings = _pings(str(tmp / f"stuffed-{mode}.sock"), 25)
        stop_started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stop_s = time.perf_counter() - stop_started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    if code != 0:
        raise RuntimeError(f"the stuffed daemon ({mode}) exited with code {code}")
    return {"ready_s": ready_s, "stop_s": stop_s, "pings": pings}


def _pings(control_socket: str, count: int) -> list[float]:
    from rarp_announce.control import request

    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        request(control_socket, {"op": "ping"}, timeout=30)
        latencies.append(time.perf_counter() - started)
        time.sleep(PING_EVERY_S)
    return latencies


def _daemon_pid(ip_pid: int) -> int:
    # `ip netns exec` execs the command in place: the pid is the daemon's own.
    return ip_pid


def run() -> list[dict]:
    from rarp_announce.lab.netns import Topology

    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmpdir, Topology(hosts=("a",)) as topo:
        tmp = Path(tmpdir)
        ns = topo.ns["a"]
        capture = topo.capture("switch", "port_a")
        try:
            capture.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            singles, many, in_process = _in_process(tmp, ns, capture)
        finally:
            capture.close()
        idle = _idle(tmp, ns)
        stuffed = {mode: _stuffed(ns, tmp, mode) for mode in ("in-flight", "retrying")}

    ms = 1000.0
    single_median = statistics.median(singles["latencies"]) * ms
    many_median = statistics.median(many["latencies"]) * ms
    many_late_p99 = _pct(many["lateness"], 0.99) * ms
    rss_mib = idle["rss"] / (1 << 20)

    def row(name, value, unit, note, **extra):
        return {"name": name, "value": value, "unit": unit, "note": note, **extra}

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        row("daemon first frame, 1 domain x2 vNICs, median", single_median, "ms",
            f"event callback -> first frame on the wire, {SINGLE_TRIES} arrivals; target <= 1 ms: {verdict(single_median <= 1)}",
            target=1.0, met=single_median <= 1),
        row("daemon first frame, 1 domain, p99", _pct(singles["latencies"], 0.99) * ms, "ms",
            f"{singles['frames']}/{singles['expected']} frames captured"),
        row("daemon first frame, in-process, median", statistics.median(in_process) * 1e6, "us",
            "callback entry -> first round handed to the kernel (the daemon's own histogram)"),
        row(f"daemon first frame, {MANY_DOMAINS} domains x{NICS} in {SPREAD_S:g} s, median", many_median, "ms",
            f"target <= 1 ms: {verdict(many_median <= 1)}", target=1.0, met=many_median <= 1),
        row(f"daemon first frame, {MANY_DOMAINS} domains, p99", _pct(many["latencies"], 0.99) * ms, "ms",
            f"{many['frames']}/{many['expected']} frames captured"),
        row(f"daemon frame lateness, {MANY_DOMAINS} domains, p99", many_late_p99, "ms",
            f"wire time - (event + nominal offset), {len(many['lateness'])} frames; target <= 10 ms: {verdict(many_late_p99 <= 10)}",
            target=10.0, met=many_late_p99 <= 10),
        row(f"daemon frame lateness, {MANY_DOMAINS} domains, max", max(many["lateness"]) * ms, "ms", ""),
        row(f"daemon prepare phase, {MANY_DOMAINS} domains", many["prepare_s"], "s",
            "STARTED/MIGRATED -> every domain resolved, sockets open, frames built"),
        row("daemon idle CPU", idle["cpu_percent"], "%",
            f"real daemon process, connected, {IDLE_SECONDS:g} s without events (issue: 30 s); target ~0"),
        row("daemon idle RSS", rss_mib, "MiB", f"target <= 60 MiB: {verdict(rss_mib <= 60)}", target=60.0, met=rss_mib <= 60),
        row("daemon start to READY=1", idle["ready_s"], "s", "process start -> systemd notify after the first connection"),
        row("daemon SIGTERM to exit", idle["stop_s"] * ms, "ms", f"target < 1000 ms: {verdict(idle['stop_s'] < 1)}",
            target=1000.0, met=idle["stop_s"] < 1),
        row(f"daemon SIGTERM to exit, {STUFFED // 1000}k arrivals in flight", stuffed["in-flight"]["stop_s"] * ms, "ms",
            f"every schedule under way; target < 1000 ms: {verdict(stuffed['in-flight']['stop_s'] < 1)}",
            target=1000.0, met=stuffed["in-flight"]["stop_s"] < 1),
        row(f"daemon SIGTERM to exit, {STUFFED // 2000}k in flight + {STUFFED // 2000}k retrying",
            stuffed["retrying"]["stop_s"] * ms, "ms",
            f"target < 1000 ms: {verdict(stuffed['retrying']['stop_s'] < 1)}",
            target=1000.0, met=stuffed["retrying"]["stop_s"] < 1),
        row(f"daemon ping, {STUFFED // 2000}k in flight + {STUFFED // 2000}k retrying, max",
            max(stuffed["retrying"]["pings"]) * ms, "ms",
            f"{len(stuffed['retrying']['pings'])} pings {PING_EVERY_S * 1000:.0f} ms apart, a retry each 0.5 s per "
            f"waiting target; target < 100 ms: {verdict(max(stuffed['retrying']['pings']) < 0.1)}",
            target=100.0, met=max(stuffed["retrying"]["pings"]) < 0.1),
        row(f"daemon start to READY=1, {STUFFED // 1000}k arrivals stuffed", stuffed["in-flight"]["ready_s"], "s",
            "process start -> READY, the table filled in between (test:///default)"),
        row("daemon ping during a 3.8 MB hand-off, max", max(idle["handoff_pings"]) * ms, "ms",
            f"{len(idle['handoff_pings'])} pings {PING_EVERY_S * 1000:.0f} ms apart until it was prepared; "
            f"p50 {statistics.median(idle['handoff_pings']) * ms:.1f} ms; target < 100 ms: "
            f"{verdict(max(idle['handoff_pings']) < 0.1)}", target=100.0, met=max(idle["handoff_pings"]) < 0.1),
        row("daemon ping during a 50k-deep config reload, max", max(idle["reload_pings"]) * ms, "ms",
            f"{len(idle['reload_pings'])} pings until the reload failed (as it must); "
            f"target < 100 ms: {verdict(max(idle['reload_pings']) < 0.1)}",
            target=100.0, met=max(idle["reload_pings"]) < 0.1),
    ]


if __name__ == "__main__":
    for result in run():
        print(f"{result['name']:<60} {result['value']:>10.3f} {result['unit']:<4} {result['note']}")
