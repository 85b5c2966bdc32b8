"""What the root hook writes: never through a symlink, a hard link or a directory someone else owns.

The attack (issue 17): waiter_dir under a world-writable directory, made by an unprivileged
user who plants `UUID.xml` as a symlink to a root-owned 0600 file; the root hook then wrote the
domain XML over it. Each test plants the trap as that user would (files chowned to nobody),
runs the hook exactly as libvirt does, and checks that the target file never changed, that the
migration is not disturbed (exit 0, nothing on stdout) and that one log line says how to fix it.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rarp_announce.errors import InputError
from rarp_announce.pids import alive
from rarp_announce.triggers import hookfiles, hookinstall, waiter
from tests.conftest import require
from tests.triggers.test_hook import UUID, Hook, assert_libvirt_safe, make_hook, spawned_waiters, two_nic_xml

NOBODY = 65534
SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


@pytest.fixture
def as_root() -> None:
    require(os.geteuid() == 0, "needs root: the hook runs as root, the trap is planted as nobody")


@pytest.fixture
def victim(short_dir: Path, as_root: None) -> Iterator[Path]:
    """A root-owned 0600 file outside anyone else's reach, like /etc/shadow."""
    path = short_dir / "shadow"
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    yield path


@pytest.fixture
def public(short_dir: Path, as_root: None) -> Path:
    """A world-writable sticky directory, like /tmp, where the waiter_dir is configured."""
    path = short_dir / "public"
    path.mkdir()
    os.chmod(path, 0o1777)
    os.chmod(short_dir, 0o755)  # nobody may reach it, as /tmp
    return path


def _standalone(short_dir: Path, waiter_dir: Path, **overrides) -> Hook:
    # Installed before the trap is planted: `hook install` refuses a waiter_dir it would refuse.
    values = {"mode": "standalone", "waiter_timeout": 0.5, "waiter_dir": str(waiter_dir), **overrides}
    return make_hook(short_dir, **values)


def _reap(hook: Hook) -> None:
    for pid in spawned_waiters(hook.log_text()):
        if alive(pid):
            os.kill(pid, 9)


def _plant_foreign_dir(path: Path, mode: int = 0o777, owner: int = NOBODY) -> None:
    path.mkdir()
    os.chown(path, owner, owner)
    os.chmod(path, mode)


def _plant_symlink(link: Path, target: Path) -> None:
    os.symlink(target, link)
    os.lchown(link, NOBODY, NOBODY)


def test_the_reproduced_attack_a_foreign_waiter_dir_with_a_symlink_is_refused(short_dir: Path, public: Path, victim: Path) -> None:
    waiters = public / "waiters"
    hook = _standalone(short_dir, waiters)
    _plant_foreign_dir(waiters)
    _plant_symlink(waiters / f"{UUID}.xml", victim)
    try:
        for operation, sub in (("migrate", "begin"), ("stopped", "end"), ("release", "end")):
            done = hook.run(["guest1", operation, sub, "-"], two_nic_xml().encode())
            assert_libvirt_safe(done)
        assert victim.read_bytes() == SECRET and stat.S_IMODE(victim.stat().st_mode) == 0o600
        assert sorted(p.name for p in waiters.iterdir()) == [f"{UUID}.xml"]  # nothing added beside the trap
        assert os.path.islink(waiters / f"{UUID}.xml")
        line = (f"waiter_dir {waiters} is owned by uid {NOBODY} (mode 0777): it must be a directory of mode 0700 "
                "owned by root; remove it and the hook recreates it")
        log = hook.log_text()
        assert log.count(f"{line}: no waiter started") == 1, log
        assert hook.waiters == []
        # The package says the same words (the waiter, `hook status`, `hook install`).
        assert hookfiles.waiter_dir_problem(str(waiters)) == line
    finally:
        _reap(hook)


@pytest.mark.parametrize("mode,owner,problem", [
    (0o755, 0, "is owned by root (mode 0755)"),
    (0o700, NOBODY, f"is owned by uid {NOBODY} (mode 0700)"),
    (0o1777, 0, "is owned by root (mode 1777)"),
])
def test_a_waiter_dir_of_the_wrong_owner_or_mode_is_refused(short_dir: Path, public: Path, victim: Path,
                                                             mode: int, owner: int, problem: str) -> None:
    waiters = public / "waiters"
    hook = _standalone(short_dir, waiters)
    _plant_foreign_dir(waiters, mode, owner)
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert f"waiter_dir {waiters} {problem}: it must be a directory of mode 0700 owned by root" in hook.log_text()
        assert list(waiters.iterdir()) == [] and hook.waiters == []
        with pytest.raises(InputError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            with waiter.claim(str(waiters), UUID):
                pass
        assert list(waiters.iterdir()) == []
    finally:
        _reap(hook)


def test_a_waiter_dir_that_is_a_symlink_to_roots_own_directory_is_refused(short_dir: Path, public: Path, victim: Path) -> None:
    private = short_dir / "private"  # root's 0700 directory, as /root/.ssh
    private.mkdir(mode=0o700)
    waiters = public / "waiters"
    hook = _standalone(short_dir, waiters)
    _plant_symlink(waiters, private)
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert f"waiter_dir {waiters} is a symbolic link: it must be a directory of mode 0700" in hook.log_text()
        assert list(private.iterdir()) == [] and hook.waiters == []
        assert hookinstall.status(str(short_dir / "hooks")).problems == [hookfiles.waiter_dir_problem(str(waiters))]
        with pytest.raises(InputError, match="is a symbolic link"):
            hookinstall.install(str(short_dir / "hooks"), hookinstall.HookSettings(waiter_dir=str(waiters), log_file=""))
    finally:
        _reap(hook)


def test_a_symlink_left_in_roots_own_waiter_dir_is_replaced_never_followed(short_dir: Path, victim: Path) -> None:
    """Even in a directory of root's, UUID.xml is written under a new name and renamed over
    whatever is there: a symlink (or a copy from an earlier migration) is replaced, not followed."""
    waiters = short_dir / "waiters"
    hook = _standalone(short_dir, waiters, waiter_timeout=3.0)
    waiters.mkdir(mode=0o700)
    os.symlink(victim, waiters / f"{UUID}.xml")
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        [pid] = hook.waiters
        assert victim.read_bytes() == SECRET
        copy = waiters / f"{UUID}.xml"
        try:  # unless the waiter has read it already (and removed it)
            fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            pass
        else:
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
                assert handle.read() == two_nic_xml().encode()
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = hook.log_text()
        assert f"rarp-announce waiter[{pid}]: timeout: domain guest1 ({UUID})" in log, log
        assert "cannot save the XML" not in log
        assert victim.read_bytes() == SECRET
        assert not any(p.name.startswith(".") for p in waiters.iterdir()), "a temporary file was left behind"
    finally:
        _reap(hook)


def test_read_hook_xml_never_reads_through_a_symlink(short_dir: Path, victim: Path) -> None:
    waiters = short_dir / "waiters"
    waiters.mkdir(mode=0o700)
    os.symlink(victim, waiters / f"{UUID}.xml")
    with waiter.claim(str(waiters), UUID) as mine:
        assert mine
        assert waiter.read_hook_xml(str(waiters), UUID) is None
    assert victim.read_bytes() == SECRET and not (waiters / f"{UUID}.xml").exists()


def _log_trap(short_dir: Path, public: Path, victim: Path, kind: str) -> Path:
    log = public / "hook.log"
    if kind == "symlink":
        _plant_symlink(log, victim)
    elif kind == "hardlink":
        os.link(victim, log)  # fs.protected_hardlinks stops nobody doing it; the hook must not rely on that
    elif kind == "fifo":
        os.mkfifo(log)
        os.chown(log, NOBODY, NOBODY)
    elif kind == "foreign":
        log.write_bytes(b"")
        os.chown(log, NOBODY, NOBODY)
        os.chmod(log, 0o666)
    return log


@pytest.mark.parametrize("kind,problem", [
    ("symlink", "is a symbolic link"), ("hardlink", "has 2 hard links"), ("fifo", "is a FIFO"),
    ("foreign", f"is owned by uid {NOBODY}"),
])
def test_the_hook_log_is_never_written_through_a_trap(short_dir: Path, public: Path, victim: Path, kind: str, problem: str) -> None:
    log = public / "hook.log"
    hook = _standalone(short_dir, short_dir / "waiters", log_file=str(log))
    _log_trap(short_dir, public, victim, kind)
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)  # a FIFO nobody reads would have blocked it
        assert done.stderr == b""
        assert victim.read_bytes() == SECRET
        if kind == "foreign":
            assert log.read_bytes() == b"", "root's lines went into a file someone else reads"
        assert hookfiles.log_file_problem(str(log)) == (
            f"log_file {log} {problem}: it must be a regular file owned by root with one link; "
            "remove it and the hook recreates it (logging to syslog meanwhile)")
        assert any(problem in line for line in hookinstall.status(str(short_dir / "hooks")).problems)
        # The waiter it started has the log as stderr: not this one. Wait for it to end and look again.
        for pid in _waiters_of(short_dir):
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert victim.read_bytes() == SECRET
    finally:
        for pid in _waiters_of(short_dir):
            if alive(pid):
                os.kill(pid, 9)


def _waiters_of(short_dir: Path) -> list[int]:
    """The waiters started with this test's waiter_dir (the log that names them is refused)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"rarp_announce.triggers.waiter" in argv and str(short_dir / "waiters").encode() in argv:
            found.append(int(entry.name))
    return found


def test_a_missing_waiter_dir_is_made_with_its_parents_and_the_waiter_starts(short_dir: Path) -> None:
    """A standalone host has no /run/rarp-announce (the daemon's unit makes it): the hook makes it."""
    waiters = short_dir / "run" / "rarp-announce" / "waiters"
    hook = _standalone(short_dir, waiters)
    try:
        done = hook.run(["guest1", "migrate", "begin", "-"], two_nic_xml().encode())
        assert_libvirt_safe(done)
        assert len(hook.waiters) == 1, hook.log_text()
        info = os.lstat(waiters)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        assert stat.S_IMODE(os.stat(waiters.parent).st_mode) == 0o755
    finally:
        _reap(hook)


def _hook_functions(**settings: str) -> dict:
    """hooks/qemu's functions with its settings replaced (its own code, not a copy of it)."""
    from tests.triggers.test_hook import REPO_HOOK

    namespace: dict = {"__name__": "rarp_announce_hook_under_test"}
    exec(compile(REPO_HOOK.read_text(), str(REPO_HOOK), "exec"), namespace)
    namespace.update(settings)
    return namespace


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "foreign"])
def test_the_hook_and_the_package_say_the_same_about_the_log(short_dir: Path, public: Path, victim: Path, kind: str) -> None:
    log = _log_trap(short_dir, public, victim, kind)
    hook = _hook_functions(LOG_FILE=str(log))
    with pytest.raises(OSError) as refused:
        hook["open_log"]()
    assert isinstance(refused.value, hook["UnsafeFile"])
    assert str(refused.value) == hookfiles.log_file_problem(str(log))
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("trap", ["foreign", "symlink", "file"])
def test_the_hook_and_the_package_say_the_same_about_the_waiter_dir(short_dir: Path, public: Path, victim: Path, trap: str) -> None:
    waiters = public / "waiters"
    if trap == "foreign":
        _plant_foreign_dir(waiters)
    elif trap == "symlink":
        _plant_symlink(waiters, short_dir)
    else:
        waiters.write_text("")
    hook = _hook_functions(WAITER_DIR=str(waiters))
    for create in (False, True):
        with pytest.raises(OSError) as refused:
            hook["open_waiter_dir"](create)
        assert isinstance(refused.value, hook["UnsafeFile"])
        assert str(refused.value) == hookfiles.waiter_dir_problem(str(waiters))
        with pytest.raises(InputError) as also:
            hookfiles.open_waiter_dir(str(waiters), create=create)
        assert str(also.value) == str(refused.value)
