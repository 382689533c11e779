"""A lifeboat.clock.Clock that moves only when a test turns it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable


class FakeClock:
    """Wall-clock time starts at `start`, monotonic time at 0; both move by `advance` only.

    A task that sleeps on it wakes when `advance` passes its deadline, or early on `settle`,
    which lets a test wait until every task has done what the time asks and sleeps again:
    what happened by then is all that will happen until the clock moves.
    """

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.elapsed = 0.0
        self._sleepers: dict[asyncio.Future[None], float] = {}
        self._fell_asleep = asyncio.Event()

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return self.elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        self._sleepers[woken] = self.elapsed + seconds
        self._fell_asleep.set()
        try:
            await woken
        finally:
            del self._sleepers[woken]

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds
        self._wake(lambda deadline: deadline <= self.elapsed)

    async def settle(self, tasks: int, timeout: float = 20.0) -> None:
        """Wake every sleeper (a wake-up before its time, which a loop that sleeps on a
        clock must take as one more look around), then wait until `tasks` tasks sleep."""
        self._wake(lambda deadline: True)
        async with asyncio.timeout(timeout):
            while self.sleeping() < tasks:
                self._fell_asleep.clear()
                await self._fell_asleep.wait()

    async def turn(self, seconds: float, tasks: int) -> None:
        """Move the clock on and wait until `tasks` tasks sleep again."""
        self.advance(seconds)
        await self.settle(tasks)

    def sleeping(self) -> int:
        return sum(1 for woken in self._sleepers if not woken.done())

    def _wake(self, due: Callable[[float], bool]) -> None:
        for woken, deadline in self._sleepers.items():
            if due(deadline) and not woken.done():
                woken.set_result(None)
