"""Polls every host's backupd and restored, and the scheduler, in the background.

Each daemon is asked once per poll interval, all at once, each with a deadline;
a daemon still busy with the previous poll is skipped, so a slow host never
holds up the others nor a check. The newest answer of each daemon is kept with
the time it arrived (`Polled`); checks read a `FleetObservation` of that and never
wait for a poll.

How the daemons are asked is injected (`Source`, implemented over gRPC by
`monitor.rpc`), so this module does no RPCs itself; so is the clock (`lifeboat.clock`):
the time answers arrive, the poll interval and the deadlines are all read from it.

`known_since` is when the monitor first saw each job in its config: the
monitor's start for the jobs configured then, the reload that added it for
the others. A reload keeps the time of jobs that stay configured. A job never
backed up has a grace period counted from it (see `lifeboat.sla`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lifeboat.clock import SYSTEM, Clock, sleep_until, within
from lifeboat.config import Config, HostConfig
from lifeboat.errors import LifeboatError
from monitor.observations import (
    BackupdObservation,
    Polled,
    RestoredObservation,
    SchedulerObservation,
)

log = logging.getLogger("lifeboat.monitor")

MIN_DEADLINE = dt.timedelta(seconds=1)
# The RPCs carry the poll's deadline themselves; the poller gives up this much later, so
# its own deadline also bounds connecting without cutting an RPC's short.
CONNECT_MARGIN = 0.5


class Source(Protocol):
    """How the monitor asks the daemons; every call raises LifeboatError on failure."""

    async def backupd(self, host: HostConfig, timeout: float) -> BackupdObservation: ...

    async def restored(self, host: HostConfig, timeout: float) -> RestoredObservation: ...

    async def scheduler(self, address: str, timeout: float) -> SchedulerObservation: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class HostData:
    backupd: Polled[BackupdObservation]
    restored: Polled[RestoredObservation]


@dataclass(frozen=True)
class FleetObservation:
    """Everything the monitor knows at one moment; reports are computed from it."""

    config: Config
    known_since: Mapping[str, dt.datetime]
    hosts: Mapping[str, HostData]
    scheduler: Polled[SchedulerObservation]

    @property
    def poll_interval(self) -> dt.timedelta:
        return self.config.monitor_poll_interval


def deadline_for(poll_interval: dt.timedelta) -> dt.timedelta:
    """How long one poll may take: one interval, but at least a second."""
    return max(poll_interval, MIN_DEADLINE)


class Poller:
    def __init__(self, config: Config, source: Source, clock: Clock = SYSTEM) -> None:
        self.source = source
        self.clock = clock
        self.config = config
        self.known_since: dict[str, dt.datetime] = {}
        self._polled: dict[tuple[str, str], Polled[Any]] = {}
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.reconfigure(config)

    # -- configuration ---------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Use a new config: new jobs are known from now, removed hosts and jobs are forgotten."""
        now = self.clock.now()
        self.known_since = {name: self.known_since.get(name, now) for name in config.jobs}
        wanted = {("scheduler", "")} | {
            (daemon, host) for host in config.hosts for daemon in ("backupd", "restored")
        }
        for key in list(self._polled):
            if key not in wanted:
                del self._polled[key]
        self.config = config

    def snapshot(self) -> FleetObservation:
        hosts = {
            name: HostData(self._get(("backupd", name)), self._get(("restored", name)))
            for name in self.config.hosts
        }
        return FleetObservation(
            self.config, dict(self.known_since), hosts, self._get(("scheduler", ""))
        )

    def _get(self, key: tuple[str, str]) -> Polled[Any]:
        return self._polled.get(key, Polled())

    # -- polling ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = None
        await self.source.close()

    async def poll_once(self) -> None:
        """Poll every daemon now and wait for the answers (or their deadlines).

        Polls already under way are waited for first: they may have asked before now.
        """
        await self.polls_ended()
        self._start_polls()
        await self.polls_ended()

    async def polls_ended(self) -> None:
        """Wait until the polls under way have their answers (or their deadlines passed)."""
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._start_polls()
            interval = self.config.monitor_poll_interval.total_seconds()
            await sleep_until(self.clock, self.clock.monotonic() + interval)

    def _start_polls(self) -> None:
        config = self.config
        timeout = deadline_for(config.monitor_poll_interval).total_seconds()
        polls: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {
            ("scheduler", ""): lambda: self.source.scheduler(config.scheduler_listen, timeout)
        }
        for name, host in config.hosts.items():
            polls[("backupd", name)] = _bind(self.source.backupd, host, timeout)
            polls[("restored", name)] = _bind(self.source.restored, host, timeout)
        for key, fetch in polls.items():
            if key in self._in_flight:
                continue
            task = asyncio.get_running_loop().create_task(self._poll(key, fetch, timeout))
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]

    async def _poll(
        self, key: tuple[str, str], fetch: Callable[[], Awaitable[Any]], timeout: float
    ) -> None:
        try:
            answer = await within(self.clock, timeout + CONNECT_MARGIN, fetch())
        except TimeoutError:
            self._record_failure(key, f"no answer within {timeout:g}s")
        except LifeboatError as error:
            self._record_failure(key, str(error))
        except Exception as error:
            log.exception("polling %s crashed", _describe(key))
            self._record_failure(key, f"internal error: {type(error).__name__}: {error}")
        else:
            if not _is_current(key, self.config):
                return
            previous = self._get(key)
            if previous.polled and not previous.reachable:
                log.info("%s answers again", _describe(key))
            self._polled[key] = previous.succeeded(answer, self.clock.now())

    def _record_failure(self, key: tuple[str, str], error: str) -> None:
        if not _is_current(key, self.config):
            return
        previous = self._get(key)
        if previous.reachable or not previous.polled:
            log.warning("%s cannot be polled: %s", _describe(key), error)
        self._polled[key] = previous.failed(error)


def _bind(
    method: Callable[[HostConfig, float], Awaitable[Any]], host: HostConfig, timeout: float
) -> Callable[[], Awaitable[Any]]:
    return lambda: method(host, timeout)


def _is_current(key: tuple[str, str], config: Config) -> bool:
    daemon, host = key
    return daemon == "scheduler" or host in config.hosts


def _describe(key: tuple[str, str]) -> str:
    daemon, host = key
    return daemon if daemon == "scheduler" else f"{daemon} of host {host}"
