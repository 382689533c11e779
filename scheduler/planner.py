"""The scheduler's decisions about one job, as pure functions of its track and the time.

A `JobTrack` is everything the scheduler holds about a job: the config, what
its host last reported (tag times, the running backup) and how its last
backups ended (failures, backoff). It is rebuilt from the hosts on every
start, so none of it needs to survive a restart except what the hosts keep.
"""

from __future__ import annotations

import datetime as dt
import enum
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lifeboat import schedule
from lifeboat.bounds import clip
from lifeboat.errors import InvalidArgument
from lifeboat.model import Job, Schedule
from lifeboat.operations import OperationState
from lifeboat.schedule import EPOCH, Plan
from scheduler.hosts import BackupOperation

MANUAL_PREFIX = "manual:"


class JobState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    BACKING_OFF = "backing-off"
    HOST_UNREACHABLE = "host-unreachable"
    DEFERRED = "deferred"


@dataclass
class JobTrack:
    """What the scheduler knows about one job (in memory only)."""

    job: Job
    # False until the job's host has reported on it.
    synced: bool = False
    last_tag_times: dict[str, dt.datetime] = field(default_factory=dict)
    running: BackupOperation | None = None
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_result: OperationState | None = None
    last_error: str = ""
    # The run the job is queued for (None while running or not synced).
    plan: Plan | None = None
    # Bumped on every local change, so a host scan that started earlier does
    # not overwrite news it could not have seen.
    generation: int = 0

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def last_backup_time(self) -> dt.datetime | None:
        return max(self.last_tag_times.values(), default=None)


@dataclass(frozen=True)
class Backoff:
    """Delays after failures: schedule.backoff(failures, base, cap)."""

    base: dt.timedelta = dt.timedelta(minutes=1)
    cap: dt.timedelta = dt.timedelta(hours=1)

    def delay(self, failures: int) -> dt.timedelta:
        return schedule.backoff(failures, self.base, self.cap)


@dataclass(frozen=True)
class JobView:
    """One job as SchedulerService shows it."""

    job: Job
    state: JobState
    next_run_time: dt.datetime | None
    next_tags: tuple[str, ...]
    last_backup_time: dt.datetime | None
    last_result: OperationState | None
    last_error: str
    backoff: dt.timedelta | None
    failures: int


@dataclass(frozen=True)
class JobChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


def planned_run(track: JobTrack, now: dt.datetime) -> Plan | None:
    """When the job should next start and with which tags; None while it runs or is unknown.

    The slot comes from lifeboat.schedule; after a failure the run also waits
    for the backoff (`retry_at`).
    """
    if not track.synced or track.running is not None:
        return None
    plan = schedule.next_run(track.name, track.job.schedule, track.last_tag_times, now)
    if track.retry_at is not None and track.retry_at > plan.time:
        return Plan(track.retry_at, plan.tags)
    return plan


def projected_run(track: JobTrack, now: dt.datetime) -> Plan | None:
    """The run after the running backup, assuming it succeeds now with its tags."""
    if track.running is None:
        return planned_run(track, now)
    if not track.synced:
        return None
    written = dict(track.last_tag_times)
    for tag in track.running.tags:
        written[tag] = now
    return schedule.next_run(track.name, track.job.schedule, written, now)


def vanished_tags(
    schedule: Schedule,
    before: Mapping[str, dt.datetime],
    after: Mapping[str, dt.datetime],
) -> tuple[str, ...]:
    """The schedule tags whose newest revision is gone between two reports of a host: no
    revision carries them any more, or only older ones do (newer revisions were deleted).
    Retention never does this: it keeps the newest revisions of every tag."""
    return tuple(
        sorted(
            tag.name
            for tag in schedule.tags
            if tag.name in before and after.get(tag.name, EPOCH) < before[tag.name]
        )
    )


def sla_window(job: Job) -> dt.timedelta:
    return job.sla_factor * job.schedule.smallest_interval()


def urgency(track: JobTrack, now: dt.datetime) -> float:
    """How far into its SLA window the job is: age of its newest backup / window.

    Above 1.0 the job is out of its SLA; a job never backed up is infinitely urgent.
    """
    last = track.last_backup_time
    if last is None:
        return math.inf
    return (now - last) / sla_window(track.job)


def most_urgent(tracks: Iterable[JobTrack], count: int, now: dt.datetime) -> list[JobTrack]:
    """The `count` tracks to start first: most overdue relative to their SLA window,
    then the earliest planned, then by name (so the order is predictable)."""
    if count <= 0:
        return []
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return heapq.nsmallest(
        count,
        tracks,
        key=lambda t: (-urgency(t, now), t.plan.time if t.plan else far, t.name),
    )


def record_result(
    track: JobTrack,
    operation: BackupOperation,
    now: dt.datetime,
    backoff: Backoff,
    retry_later_delay: dt.timedelta,
) -> None:
    """Remember how a backup ended and when the job may try again."""
    track.last_result = operation.state
    track.last_error = operation.error
    if operation.state == OperationState.SUCCEEDED:
        track.failures = 0
        track.retry_at = None
    elif operation.state == OperationState.RETRY_LATER:
        # The freeze hook asked for it: not the job's fault, so no growing backoff.
        track.retry_at = now + retry_later_delay
    else:
        record_failure(track, operation.error, now, backoff, operation.state)


def record_failure(
    track: JobTrack,
    error: str,
    now: dt.datetime,
    backoff: Backoff,
    state: OperationState = OperationState.FAILED,
) -> None:
    track.failures += 1
    track.retry_at = now + backoff.delay(track.failures)
    track.last_result = state
    track.last_error = error


def job_state(
    track: JobTrack, now: dt.datetime, host_reachable: bool, restores_running: bool
) -> JobState:
    if not host_reachable:
        return JobState.HOST_UNREACHABLE
    if track.running is not None:
        return JobState.RUNNING
    if restores_running and track.plan is not None and track.plan.time <= now:
        return JobState.DEFERRED
    if track.failures and track.retry_at is not None and track.retry_at > now:
        return JobState.BACKING_OFF
    return JobState.WAITING


def job_view(
    track: JobTrack,
    now: dt.datetime,
    backoff: Backoff,
    host_reachable: bool = True,
    restores_running: bool = False,
    host_error: str = "",
) -> JobView:
    plan = track.plan if track.running is None else projected_run(track, now)
    return JobView(
        job=track.job,
        state=job_state(track, now, host_reachable, restores_running),
        next_run_time=plan.time if plan else None,
        next_tags=tuple(sorted(plan.tags)) if plan else (),
        last_backup_time=track.last_backup_time,
        last_result=track.last_result,
        last_error=track.last_error or ("" if host_reachable else host_error),
        backoff=backoff.delay(track.failures) if track.failures else None,
        failures=track.failures,
    )


def run_tags(track: JobTrack, requested: Sequence[str], now: dt.datetime) -> list[str]:
    """The tags of a backup run on request: the given ones, or those of the next slot.

    Given tags must belong to the job's schedule or start with "manual:" (a
    label outside the schedule would never expire).
    """
    if not requested:
        plan = schedule.next_run(track.name, track.job.schedule, track.last_tag_times, now)
        return sorted(plan.tags)
    known = {tag.name for tag in track.job.schedule.tags}
    for tag in requested:
        if tag not in known and not tag.startswith(MANUAL_PREFIX):
            raise InvalidArgument(
                "tags",
                f"tag {clip(tag)} is not in schedule {track.job.schedule.name!r} "
                f"(tags: {', '.join(sorted(known))}); use {MANUAL_PREFIX}NAME for other labels",
            )
    return sorted(set(requested))


def diff_jobs(old: Mapping[str, Job], new: Mapping[str, Job]) -> JobChanges:
    return JobChanges(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(name for name in old.keys() & new.keys() if old[name] != new[name])),
    )
