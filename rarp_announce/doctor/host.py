"""The announcer on this host: the daemon (running, reachable, its libvirt connection), or the
hook; which mode the host is in; and the capabilities of the process that would announce."""

from __future__ import annotations

from typing import Any

from rarp_announce.doctor.report import Check, fail, info, ok, warn
from rarp_announce.errors import AnnounceError

# linux/capability.h bit numbers, as /proc/PID/status prints them in CapEff (proc(5)).
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def daemon_status(control_socket: str, timeout: float = 2.0) -> tuple[dict[str, Any] | None, str | None]:
    """The daemon's `status` over its control socket: (status, None), or (None, why not)."""
    from rarp_announce.control import request

    try:
        answer = request(control_socket, {"op": "status"}, timeout=timeout)
    except AnnounceError as exc:
        return None, str(exc)
    if not answer.get("ok"):
        return None, f"the daemon refused: {answer.get('error', 'no reason given')}"
    status = answer.get("status")
    return (status, None) if isinstance(status, dict) else (None, "the daemon's status is unreadable")


def daemon_checks(control_socket: str, status: dict[str, Any] | None, why_not: str | None) -> list[Check]:
    if status is None:
        return [info("daemon", why_not or f"no daemon answers on {control_socket}",
                     "without a daemon, only the hook's standalone waiter announces here (see the hook line)")]
    version = status.get("version")
    found = [ok("daemon", f"pid {status.get('pid')} answers on {control_socket}"
                + (f" (rarp-announce {version})" if version else " (an older rarp-announce, no version in its status)"))]
    connection = status.get("connection", {}) if isinstance(status.get("connection"), dict) else {}
    state, uri = connection.get("state"), status.get("uri")
    if state == "connected":
        found.append(ok("daemon", f"its libvirt connection to {uri} is up (reconnects {connection.get('reconnects', 0)})"))
    else:
        found.append(fail("daemon", f"its libvirt connection to {uri} is {state}"
                          + (f" (last error: {connection['last_error']})" if connection.get("last_error") else ""),
                          "it hears no migration event, so it announces nothing until it reconnects",
                          "start libvirtd (systemctl start libvirtd), or check the daemon's --connect URI"))
    counters = status.get("counters", {}) if isinstance(status.get("counters"), dict) else {}
    if counters.get("gave_up"):
        found.append(warn("daemon", f"it gave up on {counters['gave_up']} target(s) since it started",
                          "their device never came up or their OVS port was never wired within the retry window, "
                          "so they were never announced", "see `rarp-announce status` and the daemon's log; raise "
                          "[daemon] retry_timeout or [ovs] wiring_timeout if the ports are wired that late"))
    pending = status.get("pending", []) if isinstance(status.get("pending"), list) else []
    for item in pending[:10]:
        if isinstance(item, dict):
            found.append(info("daemon", f"waiting {item.get('waiting')} s to announce {item.get('domain')} "
                              f"{item.get('mac')} on {item.get('port') or item.get('device')}: {item.get('reason')}"))
    problems = status.get("ledger_problems", {}) if isinstance(status.get("ledger_problems"), dict) else {}
    if problems:
        found.append(warn("daemon", "its ledger of announced arrivals has problems: "
                          + ", ".join(f"{key} {value}" for key, value in sorted(problems.items())),
                          "after a restart it may announce an arrival again, or miss one it should catch up",
                          "check the daemon's --state-dir (space, permissions) and its log"))
    ovsdb = status.get("ovsdb", {}) if isinstance(status.get("ovsdb"), dict) else {}
    if ovsdb.get("state") == "disconnected":
        found.append(warn("daemon", f"its OVSDB replica ({ovsdb.get('remote')}) is disconnected"
                          + (f": {ovsdb['last_error']}" if ovsdb.get("last_error") else ""),
                          "OVS vNICs are not announced (their port, VLAN and wiring come from OVSDB)",
                          "start ovsdb-server, or set [ovs] db to the right remote"))
    return found


def hook_checks(hooks_dir: str, daemon_up: bool) -> list[Check]:
    """The hook (reusing `hook status`'s logic) and which mode the host is in."""
    from rarp_announce.triggers import hookinstall

    try:
        report = hookinstall.status(hooks_dir)
    except OSError as exc:
        return [warn("hook", f"cannot read {hooks_dir}: {exc.strerror}", "the hook's state is unknown",
                     "run doctor as root")]
    found: list[Check] = []
    if not report.installed:
        found.append(info("hook", f"not installed in {hooks_dir}"))
    else:
        settings = report.settings
        for problem in report.problems:
            found.append(fail("hook", problem, "libvirt would run a broken hook at every incoming migration",
                              f"rarp-announce hook install --hooks-dir {hooks_dir}"))
        if not report.problems:
            found.append(ok("hook", f"{report.path} installed and executable (mode {settings.mode if settings else '?'})"))
        if not report.up_to_date and not report.problems:
            found.append(warn("hook", f"{report.path} is older than this rarp-announce",
                              "it may speak an older hand-off", f"rarp-announce hook install --hooks-dir {hooks_dir}"))
        if settings is not None and settings.mode == "daemon" and not daemon_up:
            found.append(fail("hook", f"mode daemon, but no daemon answers on {settings.control_socket}",
                              "incoming guests would not be announced", "start rarp-announce daemon, "
                              "or install the hook with --mode auto"))
    mode = _mode(report.installed and not report.problems,
                 report.settings.mode if report.installed and report.settings else None, daemon_up)
    if mode is None:
        found.append(fail("mode", "neither a daemon answers nor a working hook is installed",
                          "nothing announces a guest that live-migrates onto this host",
                          "systemctl enable --now rarp-announce, or rarp-announce hook install"))
    else:
        found.append(ok("mode", mode))
    return found


def _mode(hook: bool, hook_mode: str | None, daemon_up: bool) -> str | None:
    if daemon_up and hook and hook_mode != "standalone":
        return "daemon, with the hook handing each arrival to it"
    if daemon_up:
        return "daemon (it watches libvirt's events itself)" + (" and a standalone hook" if hook else "")
    if hook:
        return "hook only: a standalone waiter per incoming migration"
    return None


def capability_checks(status: dict[str, Any] | None, proc_root: str = "/proc") -> list[Check]:
    """CAP_NET_RAW (every frame) and CAP_NET_ADMIN (the bridge FDB write) of the process that announces."""
    import os

    pid = status.get("pid") if status is not None else None
    whose = f"the daemon (pid {pid})" if isinstance(pid, int) else f"this process (pid {os.getpid()})"
    caps = effective_caps(pid if isinstance(pid, int) else "self", proc_root)
    if caps is None:
        return [warn("capabilities", f"cannot read the capabilities of {whose}", "the announcer's rights are unknown",
                     "run doctor as root on the host the daemon runs on")]
    found = []
    if caps >> CAP_NET_RAW & 1:
        found.append(ok("capabilities", f"{whose} has CAP_NET_RAW (raw frames)"))
    else:
        found.append(fail("capabilities", f"{whose} lacks CAP_NET_RAW",
                          "it cannot open the raw packet socket every announcement is sent on",
                          "run it as root, or give it AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN (the shipped unit does)"))
    if caps >> CAP_NET_ADMIN & 1:
        found.append(ok("capabilities", f"{whose} has CAP_NET_ADMIN (the bridge FDB and neighbour writes)"))
    else:
        found.append(warn("capabilities", f"{whose} lacks CAP_NET_ADMIN",
                          "the destination bridge's FDB entry cannot be pointed at the guest's tap, so with QEMU's "
                          "RARPs lost the local bridge keeps sending the guest's traffic to its uplink",
                          "give it CAP_NET_ADMIN (AmbientCapabilities in the unit) or run it as root"))
    return found


def effective_caps(pid: int | str, proc_root: str = "/proc") -> int | None:
    try:
        with open(f"{proc_root}/{pid}/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None
