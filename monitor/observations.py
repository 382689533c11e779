"""What the monitor learns from each daemon it polls, as plain values (no grpc).

`monitor.rpc` turns the daemons' answers into these; the poller keeps the newest
one of each daemon with the time it arrived; `monitor.report` judges them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lifeboat.sla import Damage


@dataclass(frozen=True)
class JobObservation:
    """One job as its backupd sees it (from BackupService.ListJobStatuses)."""

    job: str
    last_good_time: dt.datetime | None = None
    newest_distrusted: bool = False
    verification_failed: bool = False
    revision_count: int = 0
    bytes_used: int = 0
    backup_running: bool = False
    last_error: str = ""
    damaged_revisions: tuple[Damage, ...] = ()


@dataclass(frozen=True)
class BackupdObservation:
    """One answer of a host's backupd: its jobs and its repository filesystem."""

    jobs: Mapping[str, JobObservation]
    free_bytes: int = 0
    total_bytes: int = 0
    running_backups: int = 0


@dataclass(frozen=True)
class RunningRestore:
    """A restore in progress: how long it has run, how long it still needs, its target."""

    job: str
    elapsed: dt.timedelta
    eta: dt.timedelta | None = None
    restore_within: dt.timedelta | None = None

    def projected_duration(self) -> dt.timedelta | None:
        """How long the whole restore will take at its current pace; None if unknown."""
        return None if self.eta is None else self.elapsed + self.eta


@dataclass(frozen=True)
class RestoredObservation:
    """One answer of a host's restored.

    `estimates_available` is False while restored does not offer restore estimates
    (its RestoreService answers UNIMPLEMENTED): that is "no restore data", not a fault.
    """

    predicted: Mapping[str, dt.timedelta] = field(default_factory=dict)
    running: tuple[RunningRestore, ...] = ()
    estimates_available: bool = True


@dataclass(frozen=True)
class SchedulerObservation:
    """The scheduler's next run time per job."""

    next_runs: Mapping[str, dt.datetime]


T = TypeVar("T")


@dataclass(frozen=True)
class Polled(Generic[T]):
    """The newest answer of one daemon and how the latest poll went.

    `answer` survives a failed poll (so its age keeps growing); `error` is empty
    when the latest poll succeeded.
    """

    answer: T | None = None
    answer_time: dt.datetime | None = None
    error: str = ""
    polled: bool = False

    @property
    def reachable(self) -> bool:
        return self.polled and not self.error

    def age(self, now: dt.datetime) -> dt.timedelta | None:
        return None if self.answer_time is None else max(now - self.answer_time, dt.timedelta(0))

    def succeeded(self, answer: T, now: dt.datetime) -> Polled[T]:
        return Polled(answer, now, "", True)

    def failed(self, error: str) -> Polled[T]:
        return Polled(self.answer, self.answer_time, error or "unknown error", True)
