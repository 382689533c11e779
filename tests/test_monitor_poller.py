"""The poller on a clock the test turns by hand (tests.support.clock), asking a source that
answers from memory (`HeldSource`, an implementation of the monitor's own `Source`): when it
polls, which polls it skips, when it gives up on a daemon, and the times it records."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from lifeboat.config import HostConfig, parse
from monitor.observations import BackupdObservation, RestoredObservation, SchedulerObservation
from monitor.poller import CONNECT_MARGIN, Poller
from tests.support.clock import FakeClock
from tests.support.waiting import until

T = TypeVar("T")

START = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
INTERVAL = 10.0  # the config's poll-interval
EARLY = 0.25  # before a due time (a binary fraction: exact sums)
POLL_LOOP = 1  # the one task of the poller that sleeps on the clock between polls
DAEMONS = ("scheduler", "backupd backup01", "restored backup01", "backupd b2", "restored b2")


class HeldSource:
    """Answers at once, except for the daemons the test holds: their answers wait until
    released. Records which daemon was asked when (on the clock), with which deadline."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.asked: list[tuple[str, float, float]] = []
        self.held: dict[str, asyncio.Event] = {}

    def hold(self, daemon: str) -> None:
        self.held[daemon] = asyncio.Event()

    def release(self, daemon: str) -> None:
        self.held.pop(daemon).set()

    def times(self, daemon: str) -> list[float]:
        return [when for name, when, _ in self.asked if name == daemon]

    async def _answer(self, daemon: str, timeout: float, answer: T) -> T:
        self.asked.append((daemon, self.clock.monotonic(), timeout))
        if daemon in self.held:
            await self.held[daemon].wait()
        return answer

    async def backupd(self, host: HostConfig, timeout: float) -> BackupdObservation:
        return await self._answer(f"backupd {host.name}", timeout, BackupdObservation({}))

    async def restored(self, host: HostConfig, timeout: float) -> RestoredObservation:
        return await self._answer(f"restored {host.name}", timeout, RestoredObservation())

    async def scheduler(self, address: str, timeout: float) -> SchedulerObservation:
        return await self._answer("scheduler", timeout, SchedulerObservation({}))

    async def close(self) -> None:
        pass


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def source(fake: FakeClock) -> HeldSource:
    return HeldSource(fake)


@pytest.fixture
async def poller(fake: FakeClock, source: HeldSource) -> AsyncIterator[Poller]:
    config = parse(
        {
            "global": {"base-dir": "/srv/lifeboat"},
            "monitor": {"poll-interval": f"{INTERVAL:g}s"},
            "hosts": {
                "backup01": {"backupd": "127.0.0.1:9411", "restored": "127.0.0.1:9412"},
                "b2": {"backupd": "127.0.0.1:9421", "restored": "127.0.0.1:9422"},
            },
            "schedules": {"default": {"hourly": {"interval": "1h"}}},
            "jobs": {
                "vm-web01": {
                    "host": "backup01",
                    "schedule": "default",
                    "source": {"type": "file", "path": "/images/vm-web01.raw"},
                },
            },
        },
        "test.yaml",
    )
    polling = Poller(config, source, fake)
    try:
        yield polling
    finally:
        await polling.stop()


def answer_times(poller: Poller) -> dict[str, dt.datetime | None]:
    snapshot = poller.snapshot()
    times = {"scheduler": snapshot.scheduler.answer_time}
    for name, host in snapshot.hosts.items():
        times[f"backupd {name}"] = host.backupd.answer_time
        times[f"restored {name}"] = host.restored.answer_time
    return times


async def test_polls_at_start_then_every_interval(
    poller: Poller, source: HeldSource, fake: FakeClock
) -> None:
    poller.start()
    await fake.settle(POLL_LOOP)
    await poller.polls_ended()
    assert sorted(source.asked) == sorted((daemon, 0.0, INTERVAL) for daemon in DAEMONS)
    assert answer_times(poller) == dict.fromkeys(DAEMONS, START)

    await fake.turn(INTERVAL - EARLY, POLL_LOOP)
    await poller.polls_ended()
    assert len(source.asked) == len(DAEMONS), "nothing polled before the interval passed"

    await fake.turn(EARLY, POLL_LOOP)
    await poller.polls_ended()
    assert all(source.times(daemon) == [0.0, INTERVAL] for daemon in DAEMONS), source.asked
    assert answer_times(poller) == dict.fromkeys(DAEMONS, START + INTERVAL * S)


async def test_a_slow_daemon_is_skipped_until_its_deadline_and_holds_up_no_other(
    poller: Poller, source: HeldSource, fake: FakeClock
) -> None:
    slow = "backupd b2"
    others = [daemon for daemon in DAEMONS if daemon != slow]
    source.hold(slow)
    poller.start()
    await fake.settle(POLL_LOOP)
    await until(lambda: all(answer_times(poller)[d] == START for d in others), "others answer")
    assert not poller.snapshot().hosts["b2"].backupd.polled

    # The next interval: the others are asked again, the slow one (still asked) is not.
    await fake.turn(INTERVAL, POLL_LOOP)
    await until(
        lambda: all(answer_times(poller)[d] == START + INTERVAL * S for d in others),
        "others answer again",
    )
    assert source.times(slow) == [0.0]
    assert not poller.snapshot().hosts["b2"].backupd.polled

    # Given up at its deadline (the interval, plus the margin for connecting), not before.
    await fake.turn(CONNECT_MARGIN - EARLY, POLL_LOOP)
    assert not poller.snapshot().hosts["b2"].backupd.polled
    await fake.turn(EARLY, POLL_LOOP)
    await until(lambda: poller.snapshot().hosts["b2"].backupd.polled, "the slow poll given up")
    given_up = poller.snapshot().hosts["b2"].backupd
    assert (given_up.error, given_up.answer) == (f"no answer within {INTERVAL:g}s", None)

    # No longer under way, it is asked at the next interval; its answer counts again.
    await fake.turn(INTERVAL - CONNECT_MARGIN, POLL_LOOP)
    await until(lambda: len(source.times(slow)) == 2, "the slow daemon asked again")
    assert source.times(slow) == [0.0, 2 * INTERVAL]
    source.release(slow)
    await poller.polls_ended()
    answered = poller.snapshot().hosts["b2"].backupd
    assert answered.reachable and answered.answer_time == START + 2 * INTERVAL * S
