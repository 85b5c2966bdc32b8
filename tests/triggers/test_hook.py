"""hooks/qemu run exactly as libvirt runs it: argv, the domain XML on stdin, a minimal environment.

Whatever happens the hook prints nothing on stdout (libvirt would take it as a replacement XML
on `migrate`) and exits 0 (non-zero aborts the migration). A stand-in daemon speaks the control
socket protocol on a Unix socket in a temporary directory; a spawned waiter is
checked for being detached (own session, none of libvirt's pipes) and for ending at its timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rarp_announce.triggers import hookinstall
from rarp_announce.triggers.hookinstall import HookSettings
from rarp_announce.pids import alive
from rarp_announce.lab.standin import StandIn

REPO_HOOK = Path(__file__).resolve().parents[2] / "hooks" / "qemu"
UUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
# What libvirt passes to hooks (virCommandAddEnvPassCommon): little more than LC_ALL and PATH.
LIBVIRT_ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# Every call libvirt makes on a destination and a source host, and the rest of hooks.rst.
OPERATIONS = [
    ("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
    ("release", "end"), ("restore", "begin"), ("reconnect", "begin"), ("attach", "begin"),
    ("migrate", "end"), ("unknown-op", "whatever"),
]


def two_nic_xml(name: str = "guest1", uuid: str = UUID) -> str:
    # Quotes, newlines, a tab, non-ASCII and a backslash: all must reach the daemon unchanged.
    return f"""<domain type='kvm' id='7'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <description>Zoë's "test" guest\tC:\\path</description>
  <memory unit='KiB'>65536</memory>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/><source bridge='br0'/><target dev='vnet0'/><model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:ab:cd:ef'/><source bridge='br0'/><vlan><tag id='100'/></vlan><target dev='vnet1'/>
    </interface>
  </devices>
</domain>
"""


@dataclass
class Hook:
    """An installed copy of hooks/qemu in a private hooks dir, with its own socket and log."""

    root: Path
    path: Path
    control_socket: str
    log: Path
    waiters: list[int] = field(default_factory=list)

    def run(self, argv: list[str], stdin: bytes | None = b"", env: dict | None = None, path: Path | None = None):
        # Bounded so that a hook that blocks fails the test instead of hanging it; how long the
        # hook takes is a figure in benchmarks/bench_hook.py (`make bench`), not an assertion.
        done = subprocess.run(
            [str(path or self.path), *argv], input=stdin, capture_output=True,
            env=LIBVIRT_ENV if env is None else env, cwd="/", timeout=10,
        )
        self.waiters.extend(spawned_waiters(self.log_text()))
        return done

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def spawned_waiters(log: str) -> list[int]:
    return [int(line.split("waiter pid ")[1].split()[0]) for line in log.splitlines() if "standalone waiter pid" in line]


def make_hook(root: Path, **overrides) -> Hook:
    control = str(root / "ctl.sock")
    log = root / "hook.log"
    values = dict(
        control_socket=control, log_file=str(log), python=sys.executable,
        connect="test:///default", waiter_timeout=1.5, waiter_dir=str(root / "waiters"),
    )
    values.update(overrides)
    result = hookinstall.install(str(root / "hooks"), HookSettings(**values))
    return Hook(root, Path(result.path), control, log)


@pytest.fixture
def hook(short_dir: Path) -> Iterator[Hook]:
    made = make_hook(short_dir)
    try:
        yield made
    finally:
        for pid in made.waiters:  # only the waiters this test's hook started, by pid
            if alive(pid):
                os.kill(pid, 9)


@pytest.fixture
def stand_in(hook: Hook) -> Iterator[StandIn]:
    server = StandIn(hook.control_socket)
    try:
        yield server
    finally:
        server.close()


def assert_libvirt_safe(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""


@pytest.mark.parametrize("operation,sub", OPERATIONS)
def test_every_other_operation_returns_at_once_doing_nothing(hook: Hook, stand_in: StandIn, operation: str, sub: str) -> None:
    xml = two_nic_xml().encode()
    for path in (REPO_HOOK, hook.path):
        done = hook.run(["guest1", operation, sub, "-"], xml, path=path)
        assert_libvirt_safe(done)
        assert done.stderr == b""
    assert stand_in.requests == []
    assert hook.log_text() == ""


def test_the_hook_runs_with_no_environment_and_no_arguments(hook: Hook, stand_in: StandIn) -> None:
    for argv in ([], ["guest1"], ["guest1", "migrate"]):
        done = hook.run(argv, b"", env={}, path=REPO_HOOK)
        assert_libvirt_safe(done)
    done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode(), env={})
    assert_libvirt_safe(done)
    assert len(stand_in.requests) == 1


def test_migrate_begin_hands_the_domain_and_its_xml_to_the_daemon(hook: Hook, stand_in: StandIn) -> None:
    xml = two_nic_xml()
    done = hook.run(["guest1", "migrate", "begin", "-"], xml.encode())
    assert_libvirt_safe(done)
    assert stand_in.requests == [{"op": "handoff", "domain": "guest1", "uuid": UUID, "xml": xml, "source": "hook"}]
    assert stand_in.raw[0].endswith(b"\n") and stand_in.raw[0].count(b"\n") == 1
    log = hook.log_text()
    assert f"domain guest1 ({UUID}): handed off to the daemon at {hook.control_socket}" in log
    assert hook.waiters == []


def test_a_hostile_domain_name_is_handed_off_verbatim_but_never_put_in_argv(short_dir: Path) -> None:
    hostile = "--config=/etc/shadow\nx y"
    made = make_hook(short_dir)
    server = StandIn(made.control_socket)
    try:
        done = made.run([hostile, "migrate", "begin", "-"], two_nic_xml(name="x").encode())
        assert_libvirt_safe(done)
        assert server.requests[0]["domain"] == hostile
    finally:
        server.close()
    made = make_hook(short_dir, mode="standalone", waiter_timeout=0.5)
    try:
        done = made.run([hostile, "migrate", "begin", "-"], two_nic_xml(name="x").encode())
        assert_libvirt_safe(done)
        [pid] = spawned_waiters(made.log_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if alive(pid) else []
        assert b"--name" not in argv
        assert hostile not in made.log_text()  # no forged log lines either
        assert "(unusual name)" in made.log_text()
    finally:
        for pid in spawned_waiters(made.log_text()):
            if alive(pid):
                os.kill(pid, 9)


def test_with_no_daemon_a_detached_waiter_starts_and_ends_at_its_timeout(hook: Hook) -> None:
    done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
    assert_libvirt_safe(done)
    # capture_output: run() returned only at EOF on stdout and stderr, so the waiter (alive
    # below) holds neither of the pipes libvirt reads until EOF.
    assert "no daemon control socket at" in hook.log_text()
    [pid] = hook.waiters
    assert alive(pid), "the waiter must outlive the hook"
    assert os.getsid(pid) == pid, "the waiter must lead its own session"
    for fd in (0, 1):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/2") == str(hook.log)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[:4] == [sys.executable.encode(), b"-I", b"-m", b"rarp_announce.triggers.waiter"]
    assert [UUID.encode(), b"guest1", b"test:///default"] == [argv[argv.index(o) + 1] for o in (b"--uuid", b"--name", b"--connect")]
    # WAITER_TIMEOUT 1.5 s: the test driver of the waiter's own process never sees this
    # domain resume, as after a failed migration, so it must give up and exit by itself.
    deadline = time.monotonic() + 8
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the waiter outlived its timeout"
    log = hook.log_text()
    assert f"rarp-announce waiter[{pid}]: timeout: domain guest1 ({UUID}) did not resume here within" in log


@pytest.mark.parametrize("mode,waiter", [("auto", True), ("daemon", False)])
def test_a_daemon_that_accepts_but_never_answers_costs_the_timeout_only(short_dir: Path, mode: str, waiter: bool) -> None:
    made = make_hook(short_dir, mode=mode, waiter_timeout=0.5)
    server = StandIn(made.control_socket, behaviour="hang")
    try:
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert "did not answer within 0.05 s" in made.log_text()  # it did wait for the answer, then gave up
        assert bool(made.waiters) is waiter
    finally:
        server.close()
        for pid in made.waiters:
            if alive(pid):
                os.kill(pid, 9)


def test_a_daemon_that_answers_too_late_keeps_the_arrival_and_the_waiter_leaves_it(short_dir: Path) -> None:
    made = make_hook(short_dir, mode="auto", waiter_timeout=5)
    server = StandIn(made.control_socket, behaviour="slow")
    try:
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert "(it may still take the domain)" in made.log_text()
        [pid] = made.waiters
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the waiter should leave the arrival to the daemon and exit"
    finally:
        server.close()
        for pid in made.waiters:
            if alive(pid):
                os.kill(pid, 9)
    assert [r.get("op") for r in server.requests] == ["handoff", "claimed"]
    assert server.requests[1]["uuid"] == UUID
    assert "handed-off: the daemon at" in made.log_text()


@pytest.mark.parametrize("behaviour,logged", [("refuse", "the daemon refused the hand-off: state dir is full"), ("garbage", "sent an unreadable answer")])
def test_a_daemon_that_refuses_or_babbles_gets_a_waiter_instead(hook: Hook, behaviour: str, logged: str) -> None:
    server = StandIn(hook.control_socket, behaviour=behaviour)
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
    finally:
        server.close()
    assert_libvirt_safe(done)
    assert logged in hook.log_text()
    assert len(hook.waiters) == 1


def test_standalone_mode_never_asks_the_daemon(short_dir: Path) -> None:
    made = make_hook(short_dir, mode="standalone", waiter_timeout=0.5)
    server = StandIn(made.control_socket)
    try:
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert server.requests == []
        assert len(set(made.waiters)) == 1
    finally:
        server.close()
        for pid in made.waiters:
            if alive(pid):
                os.kill(pid, 9)


@pytest.mark.parametrize(
    "stdin,logged",
    [
        (b"", "no valid <uuid>"),
        (b"\x00\xff garbage \xfe" * 100, "no valid <uuid>"),
        (b"<domain><uuid>not-a-uuid</uuid></domain>", "no valid <uuid>"),
        (b"<domain><uuid>" + UUID.encode() + b"</uuid>" + b"x" * (5 * 1024 * 1024), "larger than"),
        (b"<domain><uuid>" + UUID.encode() + b"</uuid><name>\xff\xfe</name></domain>", "not UTF-8"),
    ],
    ids=["empty", "garbage", "bad-uuid", "huge", "not-utf8"],
)
def test_bad_stdin_is_logged_once_and_never_breaks_the_migration(hook: Hook, stand_in: StandIn, stdin: bytes, logged: str) -> None:
    done = hook.run(["guest1", "migrate", "begin", "-"], stdin)
    assert_libvirt_safe(done)
    log = hook.log_text()
    assert log.count(logged) == 1, log
    assert stand_in.requests == []
    if logged == "not UTF-8":  # the UUID is good: a waiter can still announce it
        assert len(hook.waiters) == 1
    else:
        assert hook.waiters == []


def test_a_stdin_that_never_ends_is_abandoned_in_time(hook: Hook, stand_in: StandIn) -> None:
    proc = subprocess.Popen([str(hook.path), "guest1", "migrate", "begin", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=LIBVIRT_ENV)
    try:
        proc.stdin.write(b"<domain><uuid>" + UUID.encode())
        proc.stdin.flush()
        proc.wait(timeout=5)  # stdin stays open: the hook must give up on it by itself
        out = proc.stdout.read()
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_libvirt_safe(subprocess.CompletedProcess([], proc.returncode, out, b""))
    assert "did not end within" in hook.log_text()
    assert stand_in.requests == []


def test_unwritable_log_and_missing_python_still_exit_zero_silently(short_dir: Path) -> None:
    made = make_hook(short_dir, mode="standalone", python="/nonexistent/python", log_file="/proc/no/such/log")
    done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
    assert_libvirt_safe(done)
    assert done.stderr == b""  # syslog took the line; nothing leaks to libvirt


def test_the_hook_loads_no_slow_module() -> None:
    """Startup is the hook's cost: json, re, socket, enum, subprocess each add 2-10 ms here."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(REPO_HOOK), "guest1", "migrate", "begin", "-"],
        input=b"", capture_output=True, env=LIBVIRT_ENV, timeout=10,
    )
    assert done.returncode == 0 and done.stdout == b""
    loaded = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines() if line.startswith("import time:")}
    assert not loaded & {"json", "re", "socket", "enum", "subprocess", "os", "tomllib", "rarp_announce"}, loaded


def test_the_repo_hook_is_the_template_and_is_executable() -> None:
    text = REPO_HOOK.read_text()
    assert os.access(REPO_HOOK, os.X_OK)
    assert text.startswith("#!/usr/bin/python3 -IS\n")
    assert hookinstall.parse_settings(text) == HookSettings()


def test_the_real_daemon_takes_the_hand_off(short_dir: Path) -> None:
    """`rarp-announce daemon` (on libvirt's test driver) answers the hook and marks the domain incoming."""
    from rarp_announce.control import request
    from rarp_announce.errors import AnnounceError
    from tests.conftest import CLI

    made = make_hook(short_dir)
    daemon = subprocess.Popen(
        [*CLI, "daemon", "--connect", "test:///default", "--control-socket", made.control_socket,
         "--state-dir", str(short_dir / "state")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert request(made.control_socket, {"op": "ping"}, timeout=0.5) == {"ok": True}
                break
            except AnnounceError:
                assert daemon.poll() is None, daemon.stderr.read().decode()
                assert time.monotonic() < deadline, "the daemon never answered its control socket"
                time.sleep(0.1)
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        status = request(made.control_socket, {"op": "status"})["status"]
        assert "guest1" in status["incoming"]
        assert status["counters"]["handoffs"] == 1
        assert "handed off to the daemon" in made.log_text() and made.waiters == []
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def test_a_closed_stdin_is_logged_and_harmless(hook: Hook, stand_in: StandIn) -> None:
    done = subprocess.run(["sh", "-c", f'exec "{hook.path}" guest1 migrate begin - <&-'], capture_output=True, env=LIBVIRT_ENV, timeout=10)
    assert_libvirt_safe(done)
    assert "cannot read the domain XML on stdin" in hook.log_text()
    assert stand_in.requests == []


def _lock_held(path: Path) -> bool:
    """Whether a live process holds the waiter's POSIX lock on `path` (what the hook tests)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.lockf(fd, os.F_TEST, 0)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("ending", ["stopped", "release"])
def test_one_waiter_per_domain_and_the_domains_end_ends_it(short_dir: Path, ending: str) -> None:
    """A retried migration starts no second waiter; libvirt's `stopped`/`release` for the domain
    (what it runs on the destination of a failed incoming migration) ends the waiter at once."""
    made = make_hook(short_dir, mode="standalone", waiter_timeout=60.0)
    lock = short_dir / "waiters" / f"{UUID}.pid"
    try:
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        [pid] = made.waiters
        deadline = time.monotonic() + 10
        while not _lock_held(lock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _lock_held(lock) and lock.read_text().strip() == str(pid)
        assert not (short_dir / "waiters" / f"{UUID}.xml").exists(), "the waiter took the hook's copy of the XML"

        for _ in range(3):  # libvirt retries the migration: the same waiter follows it
            done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
            assert_libvirt_safe(done)
        assert set(made.waiters) == {pid}
        assert made.log_text().count(f"waiter pid {pid} already follows this domain: none started") == 3

        done = made.run(["guest1", ending, "end", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(pid), f"`{ending} end` did not end the waiter"
        assert f"ended waiter pid {pid}: the domain stopped here" in made.log_text()
        assert not lock.exists(), "the waiter removes its lock file"
        # another domain's end, or the same one again, touches nothing and stays silent
        done = made.run(["guest1", ending, "end", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
    finally:
        for pid in spawned_waiters(made.log_text()):
            if alive(pid):
                os.kill(pid, 9)


def test_a_stale_pid_file_is_no_waiter(short_dir: Path) -> None:
    """A pid file nobody holds locked (a waiter killed with SIGKILL) never stops a new waiter,
    and its pid (maybe reused by anything) is never signalled."""
    made = make_hook(short_dir, mode="standalone")
    (short_dir / "waiters").mkdir(mode=0o700)  # as the hook makes it: any other it refuses
    (short_dir / "waiters" / f"{UUID}.pid").write_text(f"{os.getpid()}\n")
    try:
        done = made.run(["guest1", "stopped", "end", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)  # and this test process is still alive
        done = made.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert len(set(made.waiters)) == 1
    finally:
        for pid in spawned_waiters(made.log_text()):
            if alive(pid):
                os.kill(pid, 9)


def test_the_hooks_request_bound_is_the_daemons() -> None:
    from rarp_announce.control import MAX_REQUEST

    text = REPO_HOOK.read_text()
    assert f"MAX_REQUEST = {MAX_REQUEST}" in text
    assert hookinstall.parse_settings(hookinstall.render(HookSettings())).max_request == MAX_REQUEST
