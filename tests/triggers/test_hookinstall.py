"""`rarp-announce hook install|uninstall|status` in temporary hooks directories, refusals included."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rarp_announce.triggers import hookinstall
from rarp_announce.errors import AnnounceError, InputError
from rarp_announce.triggers.hookinstall import HookSettings
from tests.conftest import CLI, require
from tests.triggers.test_hook import LIBVIRT_ENV, UUID, StandIn, two_nic_xml

FOREIGN = "#!/bin/sh\n# the site's own qemu hook\nexit 0\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "hook", *args], capture_output=True, text=True, timeout=60)


def settings(short_dir: Path, **changes) -> HookSettings:
    values = dict(control_socket=str(short_dir / "ctl.sock"), log_file=str(short_dir / "hook.log"), python=sys.executable)
    values.update(changes)
    return HookSettings(**values)


def test_install_writes_an_executable_hook_with_its_settings_and_says_to_restart(short_dir: Path) -> None:
    hooks = short_dir / "hooks"
    done = cli("install", "--hooks-dir", str(hooks), "--control-socket", str(short_dir / "ctl.sock"),
               "--log-file", str(short_dir / "hook.log"), "--mode", "standalone", "--connect", "qemu:///system?socket=/x/sock",
               "--waiter-timeout", "120")
    assert done.returncode == 0, done.stderr
    target = hooks / "qemu.d" / "rarp-announce"
    assert f"hook installed: {target}" in done.stdout
    assert "restart" in done.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    text = target.read_text()
    assert text.startswith(f"#!{os.path.realpath(sys.executable)} -IS\n")
    assert hookinstall.parse_settings(text) == HookSettings(
        mode="standalone", control_socket=str(short_dir / "ctl.sock"), handoff_timeout=0.05, waiter_timeout=120.0,
        log_file=str(short_dir / "hook.log"), python=os.path.abspath(sys.executable), config="",
        connect="qemu:///system?socket=/x/sock", created=(str(hooks), str(hooks / "qemu.d")),
    )
    # The body is hooks/qemu's: only the #! line and the settings block differ.
    template = hookinstall.template()
    assert text.split("# --- end of settings ---")[1] == template.split("# --- end of settings ---")[1]
    assert not list((hooks / "qemu.d").glob(".*"))  # no temporary file left behind


def test_install_is_idempotent_and_updates_only_its_own_file(short_dir: Path) -> None:
    hooks = str(short_dir / "hooks")
    first = hookinstall.install(hooks, settings(short_dir))
    assert first.changed and first.new
    before = Path(first.path).stat()
    again = hookinstall.install(hooks, settings(short_dir))
    assert not again.changed and not again.new
    assert Path(first.path).stat().st_mtime_ns == before.st_mtime_ns
    done = cli("install", "--hooks-dir", hooks, "--control-socket", str(short_dir / "ctl.sock"), "--log-file", str(short_dir / "hook.log"),
               "--python", sys.executable)
    assert done.returncode == 0 and "unchanged" in done.stdout and "restart" not in done.stdout
    changed = hookinstall.install(hooks, settings(short_dir, mode="daemon"))
    assert changed.changed and not changed.new
    kept = hookinstall.parse_settings(Path(first.path).read_text())
    assert kept.mode == "daemon"
    assert kept.created == (hooks, hooks + "/qemu.d")  # still knows what it created


def test_install_refuses_a_file_that_is_not_ours(short_dir: Path) -> None:
    target = short_dir / "hooks" / "qemu.d" / "rarp-announce"
    target.parent.mkdir(parents=True)
    target.write_text(FOREIGN)
    with pytest.raises(AnnounceError, match="is not rarp-announce's hook: refusing to replace it"):
        hookinstall.install(str(short_dir / "hooks"), settings(short_dir))
    done = cli("install", "--hooks-dir", str(short_dir / "hooks"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "refusing to replace it" in done.stderr
    assert "Traceback" not in done.stderr
    assert target.read_text() == FOREIGN


def test_install_refuses_a_symlink_in_its_place(short_dir: Path) -> None:
    target = short_dir / "hooks" / "qemu.d" / "rarp-announce"
    target.parent.mkdir(parents=True)
    ours = hookinstall.render(settings(short_dir))
    (short_dir / "elsewhere").write_text(ours)  # even one that points at a copy of the hook
    target.symlink_to(short_dir / "elsewhere")
    with pytest.raises(AnnounceError, match="not rarp-announce's hook"):
        hookinstall.install(str(short_dir / "hooks"), settings(short_dir))
    assert target.is_symlink()


def test_a_foreign_qemu_script_stays_and_single_script_refuses_it(short_dir: Path) -> None:
    hooks = short_dir / "hooks"
    hooks.mkdir()
    (hooks / "qemu").write_text(FOREIGN)
    (hooks / "qemu").chmod(0o755)
    result = hookinstall.install(str(hooks), settings(short_dir))  # qemu.d coexists with it
    assert result.path == str(hooks / "qemu.d" / "rarp-announce")
    assert hookinstall.status(str(hooks)).others == [str(hooks / "qemu")]
    hookinstall.uninstall(str(hooks))
    with pytest.raises(AnnounceError, match="is not rarp-announce's hook: refusing to replace it"):
        hookinstall.install(str(hooks), settings(short_dir), single_script=True)
    assert (hooks / "qemu").read_text() == FOREIGN


def test_single_script_for_old_libvirt_and_never_both(short_dir: Path) -> None:
    hooks = str(short_dir / "hooks")
    result = hookinstall.install(hooks, settings(short_dir), single_script=True)
    assert result.path == hooks + "/qemu"
    assert hookinstall.is_ours(Path(hooks) / "qemu")
    with pytest.raises(AnnounceError, match="libvirt would run it twice"):
        hookinstall.install(hooks, settings(short_dir))
    assert hookinstall.status(hooks).path == hooks + "/qemu"
    assert hookinstall.uninstall(hooks) == [hooks + "/qemu", hooks]
    assert not Path(hooks).exists()


def test_uninstall_removes_only_what_it_installed(short_dir: Path) -> None:
    hooks = short_dir / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)  # the site made these: they stay
    hookinstall.install(str(hooks), settings(short_dir))
    (hooks / "qemu.d" / "other-hook").write_text(FOREIGN)
    removed = hookinstall.uninstall(str(hooks))
    assert removed == [str(hooks / "qemu.d" / "rarp-announce")]
    assert (hooks / "qemu.d" / "other-hook").read_text() == FOREIGN
    done = cli("uninstall", "--hooks-dir", str(hooks))
    assert done.returncode == 0 and "nothing removed" in done.stdout


def test_uninstall_removes_the_directories_it_created_when_empty_only(short_dir: Path) -> None:
    hooks = short_dir / "hooks"
    hookinstall.install(str(hooks), settings(short_dir))
    done = cli("uninstall", "--hooks-dir", str(hooks))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        f"removed {hooks / 'qemu.d' / 'rarp-announce'}", f"removed {hooks / 'qemu.d'}", f"removed {hooks}",
    ]
    hookinstall.install(str(hooks), settings(short_dir))
    (hooks / "daemon").write_text(FOREIGN)  # someone else's hook arrived meanwhile
    hookinstall.uninstall(str(hooks))
    assert (hooks / "daemon").exists() and not (hooks / "qemu.d").exists()


def test_status_tells_installed_mode_and_whether_the_daemon_answers(short_dir: Path) -> None:
    hooks = str(short_dir / "hooks")
    done = cli("status", "--hooks-dir", hooks)
    assert done.returncode == 1 and done.stdout.startswith("not installed in")
    hookinstall.install(hooks, settings(short_dir, mode="auto"))
    done = cli("status", "--hooks-dir", hooks)
    assert done.returncode == 0, done.stderr
    assert "mode: auto: a standalone waiter (no daemon answers now)" in done.stdout
    server = StandIn(str(short_dir / "ctl.sock"))
    try:
        record = json.loads(cli("status", "--hooks-dir", hooks, "--json").stdout)
    finally:
        server.close()
    assert server.requests == [{"op": "ping"}]
    assert record["installed"] and record["up_to_date"] and record["daemon_answers"] is True
    assert record["will_use"] == "hand-off to the daemon"
    assert record["settings"]["mode"] == "auto" and record["problems"] == []


def test_status_reports_a_hook_whose_python_is_gone(short_dir: Path) -> None:
    hooks = str(short_dir / "hooks")
    hookinstall.install(hooks, settings(short_dir, python=str(short_dir / "gone" / "python")))
    done = cli("status", "--hooks-dir", hooks)
    assert done.returncode == 1
    assert "the waiter's Python" in done.stderr and "missing" in done.stderr


def test_install_takes_its_defaults_from_the_config_file_and_options_win(short_dir: Path) -> None:
    config = short_dir / "config.toml"
    config.write_text(f'[hook]\nmode = "daemon"\ncontrol_socket = "{short_dir}/from-config.sock"\nwaiter_timeout = 42\n')
    hooks = str(short_dir / "hooks")
    assert cli("install", "--hooks-dir", hooks, "--config", str(config), "--log-file", "").returncode == 0
    baked = hookinstall.status(hooks).settings
    assert (baked.mode, baked.control_socket, baked.waiter_timeout, baked.config, baked.log_file) == (
        "daemon", f"{short_dir}/from-config.sock", 42.0, str(config), "")
    assert cli("install", "--hooks-dir", hooks, "--config", str(config), "--mode", "standalone").returncode == 0
    assert hookinstall.status(hooks).settings.mode == "standalone"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--mode", "sometimes"], "invalid --mode 'sometimes': expected one of auto, daemon, standalone"),
        (["--control-socket", "relative.sock"], "invalid --control-socket 'relative.sock': expected an absolute path"),
        (["--waiter-timeout", "-1"], "invalid --waiter-timeout: expected a number of seconds, 0 < s <= 86400, got -1.0"),
        (["--connect", "--evil"], "invalid --connect"),
    ],
)
def test_bad_options_are_one_line_errors_with_exit_2_and_touch_nothing(short_dir: Path, args: list[str], message: str) -> None:
    done = cli("install", "--hooks-dir", str(short_dir / "hooks"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert not (short_dir / "hooks").exists()


def test_a_hooks_dir_that_is_a_file_is_refused(short_dir: Path) -> None:
    (short_dir / "hooks").write_text("")
    with pytest.raises(InputError, match="is not a directory"):
        hookinstall.install(str(short_dir / "hooks"), settings(short_dir))


def test_settings_cannot_inject_code_into_the_hook(short_dir: Path) -> None:
    sneaky = settings(short_dir, connect="qemu:///system'; import os; os.system('touch /tmp/pwned') #")
    text = hookinstall.render(sneaky)
    assert hookinstall.parse_settings(text).connect == sneaky.connect
    compile(text, "hook", "exec")


def test_the_hook_works_through_a_private_bind_mount_of_etc_libvirt(short_dir: Path) -> None:
    """The lab's libvirtd sees its own /etc/libvirt: the hook installed there must still work."""
    require(os.geteuid() == 0, "needs root for a mount namespace")
    require(shutil.which("unshare") is not None, "needs util-linux unshare")
    require(os.path.isdir("/etc/libvirt"), "needs /etc/libvirt as a mount point")
    host_had_hook = os.path.exists("/etc/libvirt/hooks/qemu.d/rarp-announce")
    private = short_dir / "etc-libvirt"
    hookinstall.install(str(private / "hooks"), settings(short_dir))
    server = StandIn(str(short_dir / "ctl.sock"))
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount --bind {private} /etc/libvirt && exec /etc/libvirt/hooks/qemu.d/rarp-announce guest1 migrate begin -"],
            input=two_nic_xml().encode(), capture_output=True, env=LIBVIRT_ENV, timeout=10,
        )
    finally:
        server.close()
    assert done.returncode == 0 and done.stdout == b"", done.stderr
    assert [(r["op"], r["uuid"]) for r in server.requests] == [("handoff", UUID)]
    assert os.path.exists("/etc/libvirt/hooks/qemu.d/rarp-announce") is host_had_hook  # the host's own is untouched
