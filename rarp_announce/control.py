"""The control socket: one JSON request line in, one JSON response line out, then close.

Requests (hooks/qemu speaks this too, with the standard library only): {"op": "ping"},
{"op": "status"}, {"op": "handoff", "domain": NAME, "uuid": UUID, "xml": DOMAIN_XML,
"source": "hook"}, {"op": "claimed", "uuid": UUID} (does the daemon follow that arrival?).
A malformed, oversized or slow request gets {"ok": false, "error": "..."}; nothing a client
sends can stop the daemon.

Who may ask: the socket is 0600 (0660 and of the group when [daemon] control_group names one),
and besides that mode the daemon checks each peer's credentials as the kernel recorded them at
connect(2) (SO_PEERCRED, SO_PEERGROUPS: socket(7), unix(7)): root, the daemon's own user, or a
member of control_group. A hand-off makes the daemon announce a guest's addresses, so a socket
left reachable by mistake (a chmod, an ACL, a bind mount) must still not take anyone's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rarp_announce.errors import AnnounceError, InputError

MAX_REQUEST = 4 * 1024 * 1024
READ_TIMEOUT = 5.0
MAX_CLIENTS = 64  # at once; the hook's hand-off lasts milliseconds

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_log = logging.getLogger("rarp_announce.daemon")
# Linux's SO_PEERGROUPS (asm-generic/socket.h, Linux 4.13); Python's socket module may not name it.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEER_GROUPS_BYTES = 1024  # the most CPython's getsockopt reads: 256 groups
_REFUSED_REMEMBERED = 1024  # refused peers logged once each; past this many the memory starts over


class ControlServer:
    """An asyncio Unix stream server; `handler` answers each parsed request from an allowed peer."""

    def __init__(self, path: str, handler: Handler, *, group: str | None = None) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        # Every client's task, oldest first -> still reading its request line (evictable).
        self._clients: dict[asyncio.Task[None], bool] = {}
        self.group = group  # [daemon] control_group: its members may ask too
        self._gid: int | None = None
        self._refused: set[int] = set()  # uids refused and logged already

    async def start(self) -> None:
        check_socket_path(self.path)
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise AnnounceError(f"cannot create the control socket's folder {directory}: {exc.strerror}; "
                                "choose another --control-socket") from None
        _clear_stale(self.path)
        # The umask makes the socket 0600 from its creation: no window where others may connect.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST + 1)
        except OSError as exc:
            raise AnnounceError(f"cannot listen on control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.set_group(self.group)

    def set_group(self, group: str | None) -> None:
        """Let `group` (None: nobody but root) use the socket: its mode, its group, the peer check.

        Giving the socket to a group needs CAP_CHOWN (the daemon is not a member of it); without
        it the socket stays root's 0600 and one line says so, the daemon runs on.
        """
        import grp

        self.group, self._gid = group, None
        if group is not None:
            try:
                self._gid = grp.getgrnam(group).gr_gid
            except KeyError:
                _log.warning("[daemon] control_group %r: no such group any more: the control socket answers root only",
                             group)
        if self._server is None:
            return
        owner_gid = self._gid if self._gid is not None else os.getegid()
        try:
            os.chmod(self.path, 0o600)  # first: never a moment where the old group keeps access
            if os.stat(self.path).st_gid != owner_gid:
                os.chown(self.path, -1, owner_gid)
            if self._gid is not None:
                os.chmod(self.path, 0o660)
        except OSError as exc:
            _log.warning("cannot give the control socket %s to group %s: %s: it answers root only; "
                         "[daemon] control_group needs CAP_CHOWN (see the unit)", self.path, group or "root", exc.strerror)

    async def close(self) -> None:
        if self._server is None:
            return  # never listened: the path may belong to another daemon
        self._server.close()
        self._server = None
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self._refusal(writer.get_extra_info("socket"))
        if refusal is not None:
            writer.write(json.dumps(_error(refusal)).encode() + b"\n")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CLIENTS and not self._evict_oldest_reading():
            writer.write(json.dumps(_error("too many clients at once: try again")).encode() + b"\n")
            writer.close()
            return
        self._clients[task] = True
        try:
            response = await self._answer(reader, task)
            writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    def _refusal(self, sock: Any) -> str | None:
        """None when the peer may ask (root, our own user, or in control_group), else the answer's error."""
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError as exc:
            return f"cannot check who is asking: {exc.strerror}"
        if uid in (0, os.geteuid()):
            return None
        if self._gid is not None and (gid == self._gid or self._gid in peer_groups(sock)):
            return None
        allowed = f"root and group {self.group} ([daemon] control_group)" if self._gid is not None else "root"
        if uid not in self._refused:  # once per peer: a client retrying in a loop must not flood the log
            if len(self._refused) >= _REFUSED_REMEMBERED:
                self._refused.clear()
            self._refused.add(uid)
            _log.warning("control socket: refused uid %d gid %d (pid %d): only %s may use it", uid, gid, pid, allowed)
        return (f"permission denied: uid {uid} may not use this control socket: it answers {allowed} only"
                + ("" if self._gid is not None else "; set [daemon] control_group to let a group in"))

    def _evict_oldest_reading(self) -> bool:
        """Make room for a newcomer: the oldest client that has not sent its request yet goes.

        Without it, MAX_CLIENTS connections that never send a byte refused every hook and
        `status` for READ_TIMEOUT seconds, again and again; a real client sends its line at once.
        """
        for task, reading in self._clients.items():
            if reading:
                del self._clients[task]
                task.cancel()
                return True
        return False

    async def _answer(self, reader: asyncio.StreamReader, task: asyncio.Task[None]) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _error(f"request larger than {MAX_REQUEST} bytes")
        except asyncio.IncompleteReadError as exc:
            if len(exc.partial) > MAX_REQUEST:
                return _error(f"request larger than {MAX_REQUEST} bytes")
            return _error("request must be one JSON object ending with a newline")
        except asyncio.TimeoutError:
            return _error(f"no complete request line within {READ_TIMEOUT:g} s")
        if task in self._clients:
            self._clients[task] = False  # its request is in: answered, never evicted
        if len(line) > MAX_REQUEST + 1:
            return _error(f"request larger than {MAX_REQUEST} bytes")
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("request is not valid JSON")
        except RecursionError:
            return _error("request nests too deeply: one flat JSON object is expected")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error('request must be a JSON object with a string "op"')
        try:
            return await self._handler(request)
        except AnnounceError as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug must cost one request, never the daemon
            _log.exception("control request %r failed", request.get("op"))
            return _error(f"internal error: {type(exc).__name__}: {exc}")


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of a connected Unix socket's peer, as the kernel recorded them at connect(2)."""
    size = struct.calcsize("3i")
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))


def peer_groups(sock: Any) -> frozenset[int]:
    """The peer's supplementary groups at connect(2) (SO_PEERGROUPS); empty when the kernel has
    none to tell or the peer is in more than 256 (then only its primary group counts)."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _PEER_GROUPS_BYTES)
    except OSError:
        return frozenset()
    return frozenset(struct.unpack(f"{len(data) // 4}I", data[: len(data) // 4 * 4]))


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message.replace("\n", " ")}


def _clear_stale(path: str) -> None:
    """Remove a socket left by a dead daemon; refuse to take over one a live daemon answers."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InputError(f"control socket path {path} exists and is not a socket: remove it or choose --control-socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise AnnounceError(
        f"another daemon already listens on {path}: stop it, or give this one its own --control-socket and --state-dir"
    )


MAX_ANSWER = 16 * 1024 * 1024  # a status of thousands of arrivals is a few MB; more is not a daemon
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL (unix(7))


def check_socket_path(path: str) -> None:
    """InputError when `path` cannot be a Unix socket's address (too long, NUL, empty)."""
    try:
        size = len(os.fsencode(path))
    except (UnicodeError, TypeError):
        raise InputError(f"control socket path {path!r} cannot be encoded") from None
    if not path or "\0" in path:
        raise InputError("the control socket path is empty or holds a NUL byte")
    if size > _SUN_PATH_MAX:
        raise InputError(
            f"control socket path is {size} bytes: a Unix socket's address holds at most {_SUN_PATH_MAX} (unix(7)); "
            "choose a shorter --control-socket"
        )


def request(path: str, message: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a daemon's control socket and return its answer (blocking, stdlib only).

    Bounded like any peer should be: `timeout` covers connecting, sending and the whole answer
    (a daemon that drips never holds the caller longer), an answer over MAX_ANSWER bytes is
    refused, and every failure is one AnnounceError line.
    """
    check_socket_path(path)
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    chunks: list[bytes] = []
    size = 0
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise AnnounceError(f"no daemon control socket at {path}: is `rarp-announce daemon` running?") from None
        sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ANSWER:
                raise AnnounceError(f"the daemon at {path} sent more than {MAX_ANSWER} bytes: not an answer")
            chunks.append(chunk)
    except socket.timeout:
        raise AnnounceError(f"the daemon at {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise AnnounceError(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise AnnounceError(f"the daemon at {path} sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise AnnounceError(f"the daemon at {path} sent an unreadable answer")
    return answer
