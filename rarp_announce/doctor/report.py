"""A doctor's finding: one line "ok / warn / fail: what, why it matters, how to fix", and the report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "info", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "info", "warn", "fail", "skip")


@dataclass(frozen=True)
class Check:
    group: str  # daemon, hook, capabilities, bridge, firewall, ovs, evpn, addresses, targets, libvirt
    status: Status
    what: str  # what was found, naming the device, rule or setting
    why: str = ""  # why it matters for an announcement
    fix: str = ""  # how to fix it (empty when nothing is to be done)

    def line(self) -> str:
        text = f"{self.status}: {self.group}: {self.what}"
        if self.why:
            text += f": {self.why}"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text

    def record(self) -> dict[str, str]:
        return asdict(self)


def ok(group: str, what: str, why: str = "") -> Check:
    return Check(group, "ok", what, why)


def info(group: str, what: str, why: str = "") -> Check:
    return Check(group, "info", what, why)


def warn(group: str, what: str, why: str, fix: str) -> Check:
    return Check(group, "warn", what, why, fix)


def fail(group: str, what: str, why: str, fix: str) -> Check:
    return Check(group, "fail", what, why, fix)


def skipped(group: str, what: str) -> Check:
    return Check(group, "skip", what)


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings allowed), else 1."""
    return 1 if any(check.status == "fail" for check in checks) else 0


def record(checks: list[Check]) -> dict[str, object]:
    counts = Counter(check.status for check in checks)
    return {"checks": [check.record() for check in checks],
            "counts": {status: counts.get(status, 0) for status in STATUSES},
            "exit": exit_code(checks)}


def summary_line(checks: list[Check]) -> str:
    counts = Counter(check.status for check in checks)
    return ("doctor: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
            + (": nothing stops an announcement here" if not counts.get("fail") else ": see the fail lines above"))
