"""The control socket: hand-off, status, ping, and everything a bad client can send."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat

import libvirt

from rarp_announce.control import MAX_REQUEST, request
from tests.hostlab import ROUNDS, domain_xml, lifecycle, running, settle, tally

UUID = "5b0f2a5e-0000-4000-8000-00000000c0de"
MAC = "52:54:00:c0:00:01"


def _raw(path: str, payload: bytes, *, shut: bool = True) -> dict:
    """Send raw bytes, read the one-line answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        try:
            sock.sendall(payload)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed before reading it all
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    assert data.count(b"\n") == 1, data
    return json.loads(data)


def test_handoff_prepares_and_the_resume_announces_from_it(lab) -> None:
    daemon = lab.daemon()
    xml = domain_xml("handed", [(MAC, "br0", 100, None)], uuid=UUID)
    with lab.capture("br0") as on_br0:

        async def scenario():
            async with running(daemon) as holder:
                dom = holder.defineXML(xml)
                dom.create()
                answer = await asyncio.to_thread(
                    request, daemon.control_socket,
                    {"op": "handoff", "domain": "handed", "uuid": UUID, "xml": xml, "source": "hook"})
                await asyncio.sleep(0.1)
                incoming = daemon.status()["incoming"]
                lifecycle(daemon, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon, 0.1)
                return answer, incoming, daemon.status()

        answer, incoming, status = lab.run(scenario)
        assert tally(on_br0.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC, 100): ROUNDS}
    assert answer == {"ok": True}
    assert incoming == ["handed"]
    assert status["counters"]["handoffs"] == 1 and status["counters"]["announcements"] == 1


def test_claimed_tells_a_late_hook_waiter_whether_the_daemon_follows_the_domain(lab) -> None:
    daemon = lab.daemon()
    xml = domain_xml("handed", [(MAC, "br0", None, None)], uuid=UUID)

    async def scenario():
        async with running(daemon):
            before = await daemon.requests.handle({"op": "claimed", "uuid": UUID})
            await daemon.requests.handle({"op": "handoff", "domain": "handed", "uuid": UUID, "xml": xml})
            after = await daemon.requests.handle({"op": "claimed", "uuid": UUID.upper()})
            other = await daemon.requests.handle({"op": "claimed", "uuid": "5b0f2a5e-0000-4000-8000-000000000000"})
            bad = await daemon.requests.handle({"op": "claimed"})
            return before, after, other, bad

    before, after, other, bad = lab.run(scenario)
    assert before == {"ok": True, "claimed": False}
    assert after == {"ok": True, "claimed": True}
    assert other == {"ok": True, "claimed": False}
    assert bad == {"ok": False, "error": 'claimed needs a non-empty string "uuid"'}


def test_status_ping_and_bad_requests_never_stop_the_daemon(lab) -> None:
    daemon = lab.daemon()

    async def scenario():
        async with running(daemon):
            path = daemon.control_socket
            mode = stat.S_IMODE(os.stat(path).st_mode)
            call = lambda message: asyncio.to_thread(request, path, message)  # noqa: E731
            raw = lambda payload, **kw: asyncio.to_thread(_raw, path, payload, **kw)  # noqa: E731
            answers = {
                "ping": await call({"op": "ping"}),
                "status": await call({"op": "status"}),
                "not json": await raw(b"hello\n"),
                "array": await raw(b"[1, 2]\n"),
                "no op": await raw(b'{"domain": "x"}\n'),
                "unknown op": await call({"op": "reboot"}),
                "no newline": await raw(b'{"op": "ping"}'),
                "binary": await raw(b"\xff\xfe\x00\x01\n"),
                "handoff without xml": await call({"op": "handoff", "domain": "d", "uuid": UUID}),
                "handoff hostile xml": await call({"op": "handoff", "domain": "d", "uuid": UUID,
                                                   "xml": '<!DOCTYPE x [<!ENTITY a "b">]><domain/>'}),
                "handoff broken xml": await call({"op": "handoff", "domain": "d", "uuid": UUID, "xml": "<domain>"}),
                "handoff wrong uuid": await call({"op": "handoff", "domain": "d", "uuid": UUID,
                                                  "xml": domain_xml("d", [], uuid="11111111-2222-4333-8444-555555555555")}),
                "oversized": await raw(b"x" * (MAX_REQUEST + 1024) + b"\n", shut=False),
            }
            answers["ping after"] = await call({"op": "ping"})
            return mode, answers

    mode, answers = lab.run(scenario)
    assert mode == 0o600
    assert answers["ping"] == {"ok": True} and answers["ping after"] == {"ok": True}
    state = answers["status"]["status"]
    assert answers["status"]["ok"] and state["connection"]["state"] == "connected"
    assert {"in_flight", "last_announcements", "counters", "pending", "incoming"} <= set(state)
    for name in ("not json", "array", "no op", "unknown op", "no newline", "binary", "handoff without xml",
                 "handoff hostile xml", "handoff broken xml", "handoff wrong uuid", "oversized"):
        answer = answers[name]
        assert answer["ok"] is False and answer["error"] and "\n" not in answer["error"], name
    assert "DOCTYPE" in answers["handoff hostile xml"]["error"]
    assert "larger than" in answers["oversized"]["error"]
    assert "does not match" in answers["handoff wrong uuid"]["error"]


def test_concurrent_clients_are_all_answered(lab) -> None:
    daemon = lab.daemon()

    async def scenario():
        async with running(daemon):
            path = daemon.control_socket
            # A client that connects and says nothing must not hold up the others.
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.connect(path)
            try:
                messages = [{"op": "status"} if i % 2 else {"op": "ping"} for i in range(64)]
                return await asyncio.gather(*(asyncio.to_thread(request, path, m) for m in messages))
            finally:
                idle.close()

    answers = lab.run(scenario)
    assert len(answers) == 64 and all(answer["ok"] for answer in answers)
    assert sum("status" in answer for answer in answers) == 32


def test_a_second_daemon_refuses_a_socket_in_use_and_replaces_a_stale_one(lab, tmp_path) -> None:
    from rarp_announce.errors import AnnounceError

    first = lab.daemon(name="same")
    second = lab.daemon(name="same")
    second.state_dir = str(tmp_path / "second-state")  # its own state dir: the socket is what clashes
    stale = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # a socket file nobody listens on, as a crashed daemon leaves
    third = lab.daemon(name="stale")
    third.control_socket = str(stale)

    async def scenario():
        async with running(first):
            try:
                await second.start()
            except AnnounceError as exc:
                refused = str(exc)
            else:
                refused = None
            await second.stop()  # what `daemon` does after a failed start
            still = await asyncio.to_thread(request, first.control_socket, {"op": "ping"})
        async with running(third):
            return refused, still, await asyncio.to_thread(request, str(stale), {"op": "ping"})

    refused, still, answer = lab.run(scenario)
    assert refused and "another daemon already listens" in refused
    assert still == {"ok": True}, "the refused daemon must leave the first one's socket alone"
    assert answer == {"ok": True}


def test_the_real_hook_hands_off_to_the_daemon_which_announces_at_the_resume(lab) -> None:
    """hooks/qemu as libvirt runs it on `migrate begin`, talking to this daemon (the control protocol end to end)."""
    import subprocess
    import sys

    from rarp_announce.triggers import hookinstall
    from rarp_announce.triggers.hookinstall import HookSettings

    daemon = lab.daemon()
    settings = HookSettings(mode="daemon", control_socket=daemon.control_socket, log_file=str(lab.tmp / "hook.log"),
                            python=sys.executable, connect="test:///default", handoff_timeout=0.5)
    hook = hookinstall.install(str(lab.tmp / "hooks"), settings).path
    xml = domain_xml("hooked", [(MAC, "br1", 33, None)], uuid=UUID)
    with lab.capture("cap1") as on_br1:

        async def scenario():
            async with running(daemon) as holder:
                dom = holder.defineXML(xml)
                dom.create()
                done = await asyncio.to_thread(
                    subprocess.run, [hook, "hooked", "migrate", "begin", "-"], input=xml.encode(),
                    capture_output=True, timeout=30, cwd="/",
                    env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
                await asyncio.sleep(0.05)
                incoming = daemon.status()["incoming"]
                lifecycle(daemon, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                await settle(daemon, 0.1)
                return done, incoming

        done, incoming = lab.run(scenario)
        assert tally(on_br1.frames(count=ROUNDS + 1, timeout=0.5)) == {(MAC, 33): ROUNDS}
    assert done.returncode == 0 and done.stdout == b""
    assert incoming == ["hooked"]
    assert "handed off to the daemon" in (lab.tmp / "hook.log").read_text()


# ---- who may ask: SO_PEERCRED / SO_PEERGROUPS, with real unprivileged peers -------------------------

_CLIENT = r"""
import os, socket, sys
uid, gid, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
os.setgroups([int(g) for g in sys.argv[3].split(",") if g])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(path)
except PermissionError:
    print("EACCES")
    raise SystemExit(0)
try:
    sock.sendall(b'{"op": "ping"}\n')
except BrokenPipeError:
    pass  # refused: the daemon answered and closed before reading
data = b""
while True:  # to the end: the daemon answers one line and closes
    try:
        chunk = sock.recv(65536)
    except ConnectionResetError:
        break  # closed with our request unread (unix(7) resets then), after the answer line
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""
NOBODY = 65534


def _ask_as(path: str, uid: int, gid: int, groups: tuple[int, ...] = ()) -> str:
    """One ping from a child process that dropped to `uid`/`gid`/`groups` before connecting."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-I", "-c", _CLIENT, str(uid), str(gid), ",".join(map(str, groups)), path],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _a_group():
    import grp

    return next(g for g in grp.getgrall() if g.gr_gid not in (0, NOBODY) and g.gr_name)


class _Serving:
    """A ControlServer on its own loop thread, answering {"ok": true, "op": ...} to allowed peers."""

    def __init__(self, path: str, group: str | None) -> None:
        import threading

        from rarp_announce.control import ControlServer

        async def handler(message: dict) -> dict:
            return {"ok": True, "op": message["op"]}

        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, handler, group=group)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "_Serving":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _socket_dir():
    import tempfile

    from tests.conftest import require

    require(os.geteuid() == 0, "needs root: the peers drop to other users")
    directory = tempfile.mkdtemp(prefix="rac")
    os.chmod(directory, 0o755)  # every peer may reach the socket; its own mode and the daemon decide
    return directory


def test_root_and_members_of_control_group_may_ask_nobody_else(caplog) -> None:
    import logging
    import shutil

    group = _a_group()
    directory = _socket_dir()
    path = os.path.join(directory, "control.sock")
    try:
        with _Serving(path, group.gr_name), caplog.at_level(logging.WARNING, logger="rarp_announce.daemon"):
            info = os.stat(path)
            assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o660, 0, group.gr_gid)
            assert request(path, {"op": "ping"}) == {"ok": True, "op": "ping"}  # root: this test
            assert json.loads(_ask_as(path, NOBODY, group.gr_gid)) == {"ok": True, "op": "ping"}
            assert json.loads(_ask_as(path, NOBODY, NOBODY, (group.gr_gid,))) == {"ok": True, "op": "ping"}
            assert _ask_as(path, NOBODY, NOBODY) == "EACCES\n"  # the mode keeps a stranger out first
            os.chmod(path, 0o666)  # a mistake (a chmod, an ACL): the daemon's own check still holds
            answers = [_ask_as(path, NOBODY, NOBODY) for _ in range(3)]
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for answer in answers:
        assert answer.count("\n") == 1, answer  # one error line, then the connection closed
        reply = json.loads(answer)
        assert reply["ok"] is False
        assert reply["error"] == (f"permission denied: uid {NOBODY} may not use this control socket: it answers "
                                  f"root and group {group.gr_name} ([daemon] control_group) only")
    assert len(refused) == 1, refused  # once per peer, however often it retries
    assert f"refused uid {NOBODY} gid {NOBODY}" in refused[0]


def test_without_control_group_only_root_may_ask() -> None:
    """As after a reload that removed [daemon] control_group (the daemon calls set_group)."""
    import shutil

    group = _a_group()
    directory = _socket_dir()
    path = os.path.join(directory, "control.sock")
    try:
        with _Serving(path, group.gr_name) as serving:
            assert json.loads(_ask_as(path, NOBODY, group.gr_gid))["ok"] is True
            serving.loop.call_soon_threadsafe(serving.server.set_group, None)
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), serving.loop).result(10)  # after set_group ran
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.stat(path).st_gid == os.getegid()
            assert _ask_as(path, NOBODY, group.gr_gid) == "EACCES\n"
            os.chmod(path, 0o666)
            reply = json.loads(_ask_as(path, NOBODY, group.gr_gid, (group.gr_gid,)))
            assert request(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert reply == {"ok": False, "error": f"permission denied: uid {NOBODY} may not use this control socket: it "
                                           "answers root only; set [daemon] control_group to let a group in"}


def test_control_group_must_name_a_group_of_this_host() -> None:
    import pytest

    from rarp_announce.config import parse_config
    from rarp_announce.errors import InputError

    group = _a_group().gr_name
    assert parse_config({"daemon": {"control_group": group}}).daemon.control_group == group
    assert parse_config({"daemon": {"control_group": ""}}).daemon.control_group is None
    assert parse_config({}).daemon.control_group is None
    with pytest.raises(InputError, match=r"key \[daemon\] control_group: no group 'no-such-group-17' on this host"):
        parse_config({"daemon": {"control_group": "no-such-group-17"}})
    with pytest.raises(InputError, match="expected a group name"):
        parse_config({"daemon": {"control_group": 100}})
