"""A daemon stand-in on a Unix socket that speaks the control protocol, for the hook's tests
and benchmark: the hook must be measured and tested against hung, slow and broken daemons too."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class StandIn:
    """A daemon stand-in on a Unix socket: records each request line, answers per `behaviour`."""

    path: str
    behaviour: str = "ok"  # ok | refuse | hang | garbage | slow (answers ok, too late for the hook)
    requests: list[dict] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.server.settimeout(0.1)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            if self.behaviour == "hang":
                self._held.append(conn)  # accepted, never read, never answered
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while not data.endswith(b"\n") and len(data) <= 4 * 1024 * 1024:
                        chunk = conn.recv(1 << 20)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                self.raw.append(data)
                try:
                    self.requests.append(json.loads(data))
                except ValueError:
                    self.requests.append({"unparsable": True})
                if self.behaviour == "slow":
                    time.sleep(0.2)
                    claimed = self.requests[-1].get("op") == "claimed"
                    answer = b'{"ok":true,"claimed":true}\n' if claimed else b'{"ok":true}\n'
                    try:
                        conn.sendall(answer)
                    except OSError:
                        pass
                    continue
                answer = {
                    "ok": b'{"ok":true}\n',
                    "refuse": b'{"ok":false,"error":"state dir is full"}\n',
                    "garbage": b"\x00\xffnot json at all\n",
                }[self.behaviour]
                try:
                    conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for conn in self._held:
            conn.close()
        self.server.close()
