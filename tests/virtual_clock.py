"""An asyncio loop on a virtual clock: time stands still while callbacks run and jumps to the
next timer when nothing else is ready, so a schedule's offsets come out exactly, on any machine.

Only the clock is virtual: the loop is asyncio's own selector loop (its timers, its ready queue,
real file descriptors). asyncio's `BaseEventLoop._run_once` asks the selector to wait until the
next timer is due and then runs every timer due by `loop.time()`; here that wait moves the clock
forward instead of sleeping (CPython Lib/asyncio/base_events.py, `_run_once`).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _AdvancingSelector:
    """The loop's selector, except that waiting for a timer advances the virtual clock."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout is None:
            # Real I/O is ready, or no timer is pending: wait on the real descriptors.
            return ready or self._real.select(timeout)
        self._loop.now += max(0.0, timeout)
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._selector = _AdvancingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self.now


def run_on_virtual_clock(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on a VirtualClockLoop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)
