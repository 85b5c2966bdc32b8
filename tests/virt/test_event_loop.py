"""libvirt's events go to one asyncio loop per process (rarp_announce/virt/events.py).

Each case runs in a process of its own: libvirt keeps the first event implementation for the
life of a process, so trying a second loop here would poison the pytest process.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

_TWO_LOOPS = """
import asyncio

import libvirt

from rarp_announce.virt.events import EventLoopTaken, register_event_loop


async def first() -> str:
    loop = asyncio.get_running_loop()
    register_event_loop(loop)
    register_event_loop(loop)  # the same loop again: nothing to do
    conn = libvirt.open("test:///default")
    seen: asyncio.Queue = asyncio.Queue()
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                lambda _c, dom, event, detail, _o: seen.put_nowait((dom.name(), event)), None)
    dom = conn.lookupByName("test")
    dom.suspend()
    got = await asyncio.wait_for(seen.get(), 30)  # a real event of the test driver, on this loop
    dom.resume()
    conn.close()
    return f"{got[0]} {'suspended' if got[1] == libvirt.VIR_DOMAIN_EVENT_SUSPENDED else got[1]}"


async def second() -> None:
    register_event_loop(asyncio.get_running_loop())


print("first loop:", asyncio.run(first()), flush=True)
try:
    asyncio.run(second())
except EventLoopTaken as exc:
    print("second loop refused:", exc, flush=True)
else:
    print("second loop accepted", flush=True)
"""

_NOT_OURS = """
import asyncio

import libvirt

from rarp_announce.virt.events import EventLoopTaken, register_event_loop

import libvirtaio

libvirtaio.virEventAsyncIOImpl(loop=asyncio.new_event_loop()).register()  # other code's, first
try:
    register_event_loop(asyncio.new_event_loop())
except EventLoopTaken as exc:
    print("refused:", exc, flush=True)
"""


def _python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_second_loop_in_the_same_process_is_refused_with_a_clear_error(libvirt_module) -> None:
    done = _python(_TWO_LOOPS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "first loop: test suspended"
    assert lines[1] == (
        "second loop refused: libvirt's events already go to another asyncio loop of this process (closed): "
        "libvirt accepts one event implementation per process, so run each loop that watches libvirt in a "
        "process of its own, or keep using the first loop"
    )
    assert len(lines) == 2


def test_an_event_implementation_registered_by_other_code_is_refused(libvirt_module) -> None:
    done = _python(_NOT_OURS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: libvirt already has an event implementation in this process that is not ours")
    assert "run it in a process of its own" in done.stdout
