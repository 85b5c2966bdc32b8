"""`rarp-announce hook install|uninstall|status|wait`: the libvirt qemu hook and its standalone waiter."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rarp_announce.cli._common import ConfigOpt, ConnectOpt, JsonOpt, app, fail
from rarp_announce.errors import AnnounceError

hook_app = typer.Typer(
    name="hook",
    help=(
        "The libvirt qemu hook: hands each incoming migration to the daemon, or starts a standalone "
        "waiter that announces the guest when it resumes here.\n\n"
        "Example: rarp-announce hook install && systemctl restart libvirtd"
    ),
    no_args_is_help=True,
)
app.add_typer(hook_app, name="hook")

_HOOKS_DIR = "/etc/libvirt/hooks"  # libvirt's, for every packaged libvirtd
HooksDirOpt = Annotated[
    str,
    typer.Option("--hooks-dir", help="libvirt's hooks directory (a lab host's private /etc/libvirt/hooks, say).", metavar="DIR"),
]


@hook_app.command()
def install(
    hooks_dir: HooksDirOpt = _HOOKS_DIR,
    mode: Annotated[Optional[str], typer.Option("--mode", help="auto: the daemon, else a standalone waiter; daemon: hand-off only; standalone: never the daemon.", show_default="config [hook] mode, else auto")] = None,
    control_socket: Annotated[Optional[str], typer.Option("--control-socket", help="The daemon's control socket.", metavar="PATH", show_default="config [hook] control_socket")] = None,
    config: ConfigOpt = None,
    connect: ConnectOpt = None,
    log_file: Annotated[Optional[str], typer.Option("--log-file", help='Where the hook and its waiters log; "" for syslog only.', metavar="FILE", show_default="config [hook] log_file")] = None,
    waiter_timeout: Annotated[Optional[float], typer.Option("--waiter-timeout", help="Seconds a waiter waits for the resume.", show_default="config [hook] waiter_timeout (300)")] = None,
    python: Annotated[Optional[str], typer.Option("--python", help="Interpreter that has rarp_announce installed, for the waiter.", metavar="PATH", show_default="this one")] = None,
    waiter_dir: Annotated[Optional[str], typer.Option("--waiter-dir", help="Where each waiter keeps its lock (one waiter per domain) and the hook leaves it the XML.", metavar="DIR", show_default="config [hook] waiter_dir")] = None,
    single_script: Annotated[bool, typer.Option("--single-script", help="Install as DIR/qemu (libvirt < 6.5 runs only that file); never replaces someone else's.")] = False,
) -> None:
    """Install the hook as DIR/qemu.d/rarp-announce, with its settings written into it.

    Idempotent: running it again with the same settings changes nothing; with new settings it
    rewrites only its own file. It refuses to replace a file that is not its own. libvirtd only
    sees a new hook after a restart.

    \b
    Examples:
      rarp-announce hook install
      rarp-announce hook install --mode standalone --waiter-timeout 120
      rarp-announce hook install --hooks-dir /srv/lab/b/etc/libvirt/hooks --control-socket /srv/lab/b/control.sock
    """
    import os

    from rarp_announce.triggers import hookinstall
    from rarp_announce.config import load_config

    try:
        cfg = load_config(config)
        settings = hookinstall.HookSettings(
            mode=mode if mode is not None else cfg.hook.mode,
            control_socket=control_socket if control_socket is not None else cfg.hook.control_socket,
            handoff_timeout=float(cfg.hook.handoff_timeout),
            waiter_timeout=float(waiter_timeout if waiter_timeout is not None else cfg.hook.waiter_timeout),
            log_file=log_file if log_file is not None else cfg.hook.log_file,
            waiter_dir=waiter_dir if waiter_dir is not None else cfg.hook.waiter_dir,
            python=python or hookinstall.default_python(),
            config=os.path.abspath(config) if config else "",
            connect=connect or "",
        )
        result = hookinstall.install(hooks_dir, settings, single_script=single_script)
    except AnnounceError as error:
        fail(error)
    if not result.changed:
        typer.echo(f"hook already installed and unchanged: {result.path} (mode {settings.mode})")
        return
    verb = "installed" if result.new else "updated"
    typer.echo(f"hook {verb}: {result.path} (mode {settings.mode}, control socket {settings.control_socket})")
    if result.new:
        typer.echo("libvirtd only finds a new hook when it starts: restart it (systemctl restart libvirtd)")


@hook_app.command()
def uninstall(hooks_dir: HooksDirOpt = _HOOKS_DIR) -> None:
    """Remove the hook and the directories `hook install` created (when empty); nothing else.

    Example: rarp-announce hook uninstall --hooks-dir /etc/libvirt/hooks
    """
    from rarp_announce.triggers import hookinstall

    try:
        removed = hookinstall.uninstall(hooks_dir)
    except AnnounceError as error:
        fail(error)
    if not removed:
        typer.echo(f"no rarp-announce hook in {hooks_dir}: nothing removed")
    for path in removed:
        typer.echo(f"removed {path}")


@hook_app.command()
def status(hooks_dir: HooksDirOpt = _HOOKS_DIR, json_: JsonOpt = False) -> None:
    """Is the hook installed, with which mode, and does the daemon answer its control socket?

    Exit code 0 when installed without problems, 1 otherwise.

    Example: rarp-announce hook status --json
    """
    from rarp_announce.triggers import hookinstall

    report = hookinstall.status(hooks_dir)
    daemon = _daemon_answers(report.settings.control_socket) if report.settings else None
    if json_:
        record = report.record()
        record["daemon_answers"] = daemon
        record["will_use"] = _will_use(report.settings, daemon)
        typer.echo(json.dumps(record))
    elif not report.installed:
        typer.echo(f"not installed in {hooks_dir} (rarp-announce hook install --hooks-dir {hooks_dir})")
    else:
        settings = report.settings
        typer.echo(f"installed: {report.path}" + ("" if report.up_to_date else " (older than this rarp-announce: run `hook install` again)"))
        if settings is not None:
            typer.echo(f"mode: {settings.mode}: {_will_use(settings, daemon)}")
            typer.echo(f"control socket: {settings.control_socket} ({'answers' if daemon else 'no daemon answers'})")
            typer.echo(f"waiter: {settings.python or '(checkout .venv)'} -m rarp_announce hook wait, timeout {settings.waiter_timeout:g} s")
            typer.echo(f"log: {settings.log_file or 'syslog'}")
    if not json_:
        for other in report.others:
            typer.echo(f"libvirt also runs: {other}")
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
    raise typer.Exit(0 if report.installed and not report.problems else 1)


@hook_app.command()
def wait(
    uuid: Annotated[str, typer.Option("--uuid", help="UUID of the incoming domain.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Its name, for the log.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after S seconds without a resume.")] = 300.0,
    connect: ConnectOpt = None,
    config: ConfigOpt = None,
    hook_pid: Annotated[Optional[int], typer.Option("--hook-pid", help="Connect to libvirt only once this process (the hook) has exited.")] = None,
    ask_daemon: Annotated[Optional[str], typer.Option("--ask-daemon", metavar="SOCKET", help="First ask the daemon at this control socket whether it took the domain after all (its hand-off answer was late); if so, leave it to the daemon.")] = None,
    waiter_dir: Annotated[Optional[str], typer.Option("--waiter-dir", metavar="DIR", help="Where this waiter's lock lives (one waiter per domain) and the hook left the domain XML.", show_default="config [hook] waiter_dir")] = None,
) -> None:
    """Wait for one incoming domain to resume on this host, announce its vNICs, and exit.

    The hook starts this, detached, when no daemon takes the hand-off; it is safe to run by
    hand too. Exit 0 when announced (or the migration failed and the domain left), 1 on timeout.

    Example: rarp-announce hook wait --uuid 4dea22b3-1d52-d8f3-2516-782e98ab3fa0 --timeout 60
    """
    from rarp_announce.triggers.waiter import wait_main

    raise typer.Exit(wait_main(uuid, name=name, timeout=timeout, connect=connect, config_path=config,
                               hook_pid=hook_pid, ask_daemon=ask_daemon, waiter_dir=waiter_dir))


def _daemon_answers(path: str) -> bool:
    from rarp_announce.control import request

    # Generous: a busy daemon on a loaded host still answers, and `status` must not call it gone;
    # with no daemon the socket is missing or refused at once, so nobody waits.
    try:
        return request(path, {"op": "ping"}, timeout=5.0).get("ok") is True
    except AnnounceError:
        return False


def _will_use(settings, daemon: bool | None) -> str:
    if settings is None:
        return "unknown (settings unreadable)"
    if settings.mode == "standalone":
        return "a standalone waiter per incoming migration"
    if settings.mode == "daemon":
        return "hand-off to the daemon" + ("" if daemon else " (none answers now: incoming guests would not be announced)")
    return "hand-off to the daemon" if daemon else "a standalone waiter (no daemon answers now)"
