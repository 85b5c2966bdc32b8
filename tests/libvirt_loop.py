"""The one asyncio loop on which this pytest process's in-process daemons and waiters meet libvirt.

libvirt accepts one event implementation per process, and libvirtaio binds it to one loop
(rarp_announce/virt/events.py refuses a second), so every test that runs the daemon or a waiter
in this process runs its scenario here, one test after the other, on one loop kept for the
session (what pytest-asyncio's session-scoped loop does). A test that needs a loop of its own
runs in a process of its own (tests/lab, tests/faults/_stuffed_daemon.py,
tests/virt/test_event_loop.py).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

_runner: asyncio.Runner | None = None


def run_scenario(scenario: Callable[[], Coroutine[Any, Any, Any]], ns: str | None = None) -> Any:
    """Run `scenario()` to its end on the session's loop, this thread inside netns `ns` if given."""
    global _runner
    from rarp_announce.lab.netns import inside

    if _runner is None:
        _runner = asyncio.Runner()
        atexit.register(_runner.close)
    loop = _runner.get_loop()
    # A fresh default executor for each scenario, as asyncio.run gives: a thread inherits the
    # netns its creator is in when it starts (setns(2)), so a worker kept from the last test
    # would resolve devices (resolve/host.py, asyncio.to_thread) in that test's namespace.
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
    loop.set_default_executor(executor)
    try:
        with inside(ns) if ns is not None else contextlib.nullcontext():
            try:
                return _runner.run(scenario())
            finally:
                _cancel_leftovers(loop)
    finally:
        executor.shutdown(wait=True)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does at its end: cancel the tasks a scenario left running (a background
    retry, a client handler) and let them finish, so none runs on into the next test."""
    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
