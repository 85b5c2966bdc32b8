"""The control socket: one JSON request line in, one JSON response line out, then close.

Requests (hooks/qemu speaks this too, with the standard library only): {"op": "ping"},
{"op": "status"}, {"op": "handoff", "domain": NAME, "uuid": UUID, "xml": DOMAIN_XML,
"source": "hook"}, {"op": "claimed", "uuid": UUID} (does the daemon follow that arrival?).
A malformed, oversized or slow request gets {"ok": false, "error": "..."}; nothing a client
sends can stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rarp_announce.errors import AnnounceError, InputError

MAX_REQUEST = 4 * 1024 * 1024
READ_TIMEOUT = 5.0
MAX_CLIENTS = 64  # at once; the hook's hand-off lasts milliseconds

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_log = logging.getLogger("rarp_announce.daemon")


class ControlServer:
    """An asyncio Unix stream server; `handler` answers each parsed request."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        # Every client's task, oldest first -> still reading its request line (evictable).
        self._clients: dict[asyncio.Task[None], bool] = {}

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
