"""The one clock. Everything that asks for the time calls `now()`; tests patch it.

Code that waits for time to pass (the scheduler's host tasks, the monitor's poller and
HTTP server) takes a `Clock` instead, so a test can turn time by hand rather than sleep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


def now() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The wall-clock time, timezone-aware in UTC: what slots and timestamps use."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: what delays and deadlines are measured in."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> dt.datetime:
        return now()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()


async def sleep_unless_set(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Sleep `seconds` on `clock`, or less: until `event` is set."""
    if event.is_set():
        return
    set_ = asyncio.ensure_future(event.wait())
    slept = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((set_, slept), return_when=asyncio.FIRST_COMPLETED)
    finally:
        set_.cancel()
        slept.cancel()


async def sleep_until(clock: Clock, deadline: float) -> None:
    """Sleep on `clock` until its monotonic time reaches `deadline`; a sleep that ends
    early (a clock may wake its sleepers for one more look around) sleeps on."""
    while (left := deadline - clock.monotonic()) > 0:
        await clock.sleep(left)


async def within(clock: Clock, seconds: float, work: Awaitable[T]) -> T:
    """What `work` gives, or TimeoutError once `seconds` passed on `clock` (asyncio.wait_for
    on an injected clock); `work` is then cancelled and waited for."""
    task = asyncio.ensure_future(work)
    expiry = asyncio.ensure_future(sleep_until(clock, clock.monotonic() + seconds))
    try:
        await asyncio.wait((task, expiry), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        expiry.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
        if task.cancelled():
            raise TimeoutError
    return task.result()
