"""Schedules the jobs of one backup host: one task, one heap of planned runs.

The task loops: (re)scan the host when needed, poll the host's running
backups while any run, move jobs whose planned time has come from the heap to
the ready set, and start the most urgent ready jobs while the host has free
slots and no restores. Then it sleeps until the earliest of: the next planned
run, the next poll, the end of a hold, a wake-up (reload, RunJob, stop).

Every failure of a call to the host makes the whole host "unreachable": its
jobs show HOST_UNREACHABLE, and the host is scanned again after a backoff.
Other hosts have their own tasks and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import replace

from lifeboat import schedule
from lifeboat.clock import SYSTEM, Clock, sleep_unless_set
from lifeboat.config import HostConfig
from lifeboat.errors import LifeboatError, NotFound, ResourceExhausted, Unavailable
from lifeboat.model import Job
from scheduler import planner
from scheduler.hosts import BackupOperation, HostClient, JobOnHost
from scheduler.planner import Backoff, JobTrack, JobView
from scheduler.settings import SchedulerSettings

log = logging.getLogger("lifeboat.scheduler")


async def run_all(calls: Iterable[Awaitable[None]]) -> None:
    """Await calls concurrently; afterwards raise the first error (Unavailable first)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if isinstance(failure, Unavailable):
            raise failure
    if failures:
        raise failures[0]


class HostScheduler:
    def __init__(
        self,
        host: HostConfig,
        client: HostClient,
        settings: SchedulerSettings,
        clock: Clock = SYSTEM,
    ) -> None:
        self.host = host
        self.client = client
        self.settings = settings
        self.clock = clock
        self.backoff = Backoff(settings.failure_backoff_base, settings.failure_backoff_cap)
        self.tracks: dict[str, JobTrack] = {}
        self.reachable = True
        self.error = ""
        self.restores_running = False
        self._heap: list[tuple[dt.datetime, int, str]] = []
        self._queued: dict[str, int] = {}  # job -> sequence number of its live heap entry
        self._ready: set[str] = set()
        self._running: set[str] = set()
        self._others_running = 0  # backups of jobs this scheduler does not track
        self._sequence = itertools.count()
        self._needs_scan = True
        self._scan_failures = 0
        self._scan_not_before = 0.0  # monotonic; the backoff after trouble
        self._next_scan = 0.0
        self._next_poll = 0.0
        self._hold_until = 0.0
        self._restores_checked = -1e9
        self._restored_down = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"scheduler-host-{self.host.name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.close()

    def wake(self) -> None:
        self._wake.set()

    # -- jobs -------------------------------------------------------------------------------

    def set_jobs(self, jobs: Iterable[Job]) -> None:
        """Schedule exactly these jobs; the host is scanned again before the next start."""
        wanted = {job.name: job for job in jobs}
        for name in list(self.tracks):
            if name not in wanted:
                self._forget(name)
        for name, job in wanted.items():
            track = self.tracks.get(name)
            if track is None:
                self.tracks[name] = JobTrack(job)
            elif track.job != job:
                # A changed job (say, a fixed source) deserves a fresh try.
                track.job = job
                track.failures = 0
                track.retry_at = None
                track.generation += 1
                self._reschedule(track)
        self.request_scan()

    def request_scan(self) -> None:
        self._needs_scan = True
        self._scan_not_before = 0.0
        self.wake()

    def _forget(self, name: str) -> None:
        track = self.tracks.pop(name)
        self._ready.discard(name)
        self._queued.pop(name, None)
        if name in self._running:
            # Its backup keeps running on the host and still takes a slot there.
            self._running.discard(name)
            self._others_running += 1
        track.generation += 1

    # -- views ------------------------------------------------------------------------------

    def view(self, name: str) -> JobView:
        return planner.job_view(
            self.tracks[name],
            self.clock.now(),
            self.backoff,
            host_reachable=self.reachable,
            restores_running=self.restores_running,
            host_error=self.error,
        )

    def views(self) -> list[JobView]:
        now = self.clock.now()
        return [
            planner.job_view(
                track, now, self.backoff, self.reachable, self.restores_running, self.error
            )
            for track in self.tracks.values()
        ]

    # -- run on request ---------------------------------------------------------------------

    async def run_now(self, name: str, tags: Sequence[str]) -> tuple[BackupOperation, bool]:
        """Start a backup of the job now (RunJob); empty tags: those of its next slot.

        An explicit request: it waits neither for the queue nor for restores; backupd's
        worker-limit still applies (ResourceExhausted goes back to the caller).
        """
        track = self.tracks[name]
        if not track.synced:
            self._apply_report(track, await self.client.job_report(name))
        chosen = planner.run_tags(track, tags, self.clock.now())
        operation, started = await self.client.start_backup(track.job, chosen)
        if self.tracks.get(name) is track:
            self._mark_running(track, operation)
            track.generation += 1
            self._reschedule(track)
        log.info(
            "%s: backup of %s on request with tags %s: %s",
            self.host.name,
            name,
            ",".join(chosen),
            operation.name if started else f"already running as {operation.name}",
        )
        self.wake()
        return operation, started

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._trouble(error)
            await self._sleep(self._next_wakeup())

    async def _step(self) -> None:
        if self.clock.monotonic() >= self._next_scan:
            self._needs_scan = True
        if self._needs_scan:
            if self.clock.monotonic() < self._scan_not_before:
                return
            await self._scan()
        if (self._running or self._others_running) and self.clock.monotonic() >= self._next_poll:
            await self._poll_running()
        self._promote_due(self.clock.now())
        if self._ready and self._free_slots() > 0 and self.clock.monotonic() >= self._hold_until:
            await self._dispatch()

    def _trouble(self, error: BaseException) -> None:
        """A call to the host failed: scan it again after a backoff; report it meanwhile."""
        self._scan_failures += 1
        delay = schedule.backoff(
            self._scan_failures, self.settings.host_backoff_base, self.settings.host_backoff_cap
        )
        self._needs_scan = True
        self._scan_not_before = self.clock.monotonic() + delay.total_seconds()
        message = str(error) if isinstance(error, LifeboatError) else repr(error)
        if self.reachable or message != self.error:
            if isinstance(error, LifeboatError):
                log.warning(
                    "host %s: %s; retrying in %.0fs", self.host.name, message, delay.total_seconds()
                )
            else:
                log.error("host %s: unexpected error", self.host.name, exc_info=error)
        self.reachable = False
        self.error = message

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless_set(self.clock, seconds, self._wake)
        self._wake.clear()

    def _next_wakeup(self) -> float:
        now = self.clock.monotonic()
        deadlines = [now + self.settings.max_sleep]
        if self._needs_scan:
            return max(0.0, min(self._scan_not_before, deadlines[0]) - now)
        deadlines.append(self._next_scan)
        if self._running or self._others_running:
            deadlines.append(self._next_poll)
        if self._ready and self._free_slots() > 0:
            deadlines.append(self._hold_until)
        top = self._peek()
        if top is not None:
            deadlines.append(now + (top - self.clock.now()).total_seconds())
        return max(0.0, min(deadlines) - now)

    # -- scanning the host ------------------------------------------------------------------

    async def _scan(self) -> None:
        """Ask the host for every job's tag times and running backup (on start, after reload,
        after trouble, and every scan_interval)."""
        self._needs_scan = False
        generations = {name: track.generation for name, track in self.tracks.items()}
        started = self.clock.monotonic()
        try:
            # Asked first: a backup that ends while the host lists its jobs may show
            # neither as running nor as a revision; it is kept as running, and the
            # next poll learns how it ended from its operation.
            running_before = {op.job: op for op in await self.client.running_backups()}
            reports = await self.client.job_reports()
        except BaseException:
            self._needs_scan = True
            raise
        by_job = {report.job: report for report in reports}
        for job, operation in running_before.items():
            report = by_job.get(job, JobOnHost(job))
            if report.running is None:
                by_job[job] = replace(report, running=operation)
        self._others_running = sum(
            1 for r in reports if r.running is not None and r.job not in self.tracks
        )
        for name, generation in generations.items():
            track = self.tracks.get(name)
            if track is not None and track.generation == generation:
                self._apply_report(track, by_job.get(name, JobOnHost(name)))
        if not self.reachable:
            log.info("host %s is reachable again", self.host.name)
        self.reachable = True
        self.error = ""
        self._scan_failures = 0
        self._next_scan = self.clock.monotonic() + self.settings.scan_interval
        log.info(
            "host %s: scanned %d jobs in %.2fs: %d running, %d due now",
            self.host.name,
            len(generations),
            self.clock.monotonic() - started,
            len(self._running),
            len(self._ready),
        )

    def _apply_report(self, track: JobTrack, report: JobOnHost) -> None:
        gone = planner.vanished_tags(
            track.job.schedule, track.last_tag_times, report.last_tag_times
        )
        if gone:
            log.warning(
                "%s: the newest revision tagged %s is gone from host %s; planned again",
                track.name,
                ",".join(gone),
                self.host.name,
            )
        track.synced = True
        track.last_tag_times = dict(report.last_tag_times)
        if report.running is not None:
            self._mark_running(track, report.running)
        self._reschedule(track)

    # -- running backups --------------------------------------------------------------------

    def _mark_running(self, track: JobTrack, operation: BackupOperation) -> None:
        if not self._running and not self._others_running:
            self._next_poll = self.clock.monotonic() + self.settings.poll_interval
        track.running = operation
        self._running.add(track.name)
        self._ready.discard(track.name)
        self._queued.pop(track.name, None)
        track.plan = None

    def _free_slots(self) -> int:
        return self.host.worker_limit - len(self._running) - self._others_running

    async def _poll_running(self) -> None:
        operations = await self.client.running_backups()
        self._next_poll = self.clock.monotonic() + self.settings.poll_interval
        by_job = {operation.job: operation for operation in operations}
        self._others_running = sum(1 for job in by_job if job not in self.tracks)
        ended = []
        for name, operation in by_job.items():
            track = self.tracks.get(name)
            if track is not None:
                self._mark_running(track, operation)
        for name in list(self._running):
            if name not in by_job:
                ended.append(self.tracks[name])
        await run_all(self._finish(track) for track in ended)

    async def _finish(self, track: JobTrack) -> None:
        """A backup is no longer listed as running: learn how it ended and plan the next run."""
        operation = track.running
        assert operation is not None
        try:
            final: BackupOperation | None = await self.client.operation(operation.name)
        except NotFound:
            final = None  # backupd restarted and forgot it; the job's status tells the rest
        if final is not None and not final.state.finished:
            return  # started while the poll was under way
        report = await self.client.job_report(track.name)
        if self.tracks.get(track.name) is not track:
            return
        now = self.clock.now()
        if final is None:
            log.warning(
                "%s: backup %s vanished from host %s", track.name, operation.name, self.host.name
            )
        else:
            planner.record_result(track, final, now, self.backoff, self.settings.retry_later_delay)
            log.info(
                "%s: backup %s ended %s%s",
                track.name,
                final.name,
                final.state.value,
                f": {final.error}" if final.error else "",
            )
        track.generation += 1
        if track.running is operation:
            track.running = None
            self._running.discard(track.name)
        self._apply_report(track, report)

    # -- planning ---------------------------------------------------------------------------

    def _reschedule(self, track: JobTrack) -> None:
        name = track.name
        if self.tracks.get(name) is not track:
            return
        self._ready.discard(name)
        self._queued.pop(name, None)
        now = self.clock.now()
        plan = planner.planned_run(track, now)
        track.plan = plan
        if plan is None:
            return
        if plan.time <= now:
            self._ready.add(name)
            return
        sequence = next(self._sequence)
        heapq.heappush(self._heap, (plan.time, sequence, name))
        self._queued[name] = sequence
        if len(self._heap) > 2 * len(self._queued) + 64:
            self._heap = [e for e in self._heap if self._queued.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _peek(self) -> dt.datetime | None:
        while self._heap and self._queued.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _promote_due(self, now: dt.datetime) -> None:
        while (top := self._peek()) is not None and top <= now:
            _, _, name = heapq.heappop(self._heap)
            del self._queued[name]
            self._ready.add(name)

    # -- starting backups -------------------------------------------------------------------

    async def _dispatch(self) -> None:
        if not await self._restores_allow_backups():
            return
        now = self.clock.now()
        chosen = planner.most_urgent(
            (self.tracks[name] for name in self._ready), self._free_slots(), now
        )
        await run_all(self._start(track, now) for track in chosen)

    async def _start(self, track: JobTrack, now: dt.datetime) -> None:
        name = track.name
        self._ready.discard(name)
        tags = schedule.due_tags(name, track.job.schedule, track.last_tag_times, now)
        if not tags:
            self._reschedule(track)
            return
        planned = track.plan.time if track.plan else now
        track.generation += 1
        try:
            operation, started = await self.client.start_backup(track.job, sorted(tags))
        except ResourceExhausted as error:
            # backupd has no free slot (backups we do not know of): not a failure.
            if self.tracks.get(name) is track:
                self._ready.add(name)
                self._hold_until = self.clock.monotonic() + self.settings.busy_retry
            log.info("%s: host %s is busy, retrying soon: %s", name, self.host.name, error)
            return
        except Unavailable:
            if self.tracks.get(name) is track:
                self._ready.add(name)
            raise
        except LifeboatError as error:
            log.error("%s: cannot start a backup: %s", name, error)
            planner.record_failure(track, str(error), self.clock.now(), self.backoff)
            self._reschedule(track)
            return
        if self.tracks.get(name) is not track:
            self._others_running += 1
            return
        self._mark_running(track, operation)
        late = (self.clock.now() - planned).total_seconds()
        if started:
            log.info(
                "%s: started backup %s with tags %s (%.3fs after its planned time)",
                name,
                operation.name,
                ",".join(sorted(tags)),
                late,
            )
        else:
            log.info("%s: a backup is already running: %s", name, operation.name)

    async def _restores_allow_backups(self) -> bool:
        """No new backups while restores run on the host.

        When restored does not answer (within restore_check_timeout), backups go
        ahead: restores run inside restored, so one that cannot be reached is most
        likely down and restoring nothing, and waiting for it would turn a restored
        outage into missed backups. It is asked again at the next dispatch.
        """
        now = self.clock.monotonic()
        if not self.restores_running and now < self._restores_checked + (
            self.settings.restore_check_cache
        ):
            return True
        self._restores_checked = now
        try:
            count = await self.client.running_restores()
        except LifeboatError as error:
            if not self._restored_down:
                log.warning(
                    "host %s: restored does not answer (%s); backups go ahead",
                    self.host.name,
                    error,
                )
            self._restored_down = True
            self.restores_running = False
            return True
        if self._restored_down:
            log.info("host %s: restored answers again", self.host.name)
        self._restored_down = False
        if count and not self.restores_running:
            log.info("host %s: %d restores running; backups wait for them", self.host.name, count)
        if not count and self.restores_running:
            log.info("host %s: restores finished; backups resume", self.host.name)
        self.restores_running = bool(count)
        if count:
            self._hold_until = now + self.settings.restore_poll_interval
        return not count
