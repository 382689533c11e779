"""What the scheduler needs from a backup host, as plain types and one interface.

The gRPC implementation lives in `scheduler.remote`; the scheduling code only
sees `HostClient`, so it never imports grpc or generated code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lifeboat.config import HostConfig
from lifeboat.model import Job
from lifeboat.operations import OperationState


@dataclass(frozen=True)
class BackupOperation:
    """A backup operation as a host reports it."""

    name: str
    job: str
    host: str
    state: OperationState
    tags: tuple[str, ...] = ()
    create_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    error: str = ""
    revision_id: str = ""
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class JobOnHost:
    """What a host knows about one job: when each tag was last written, what runs."""

    job: str
    last_tag_times: Mapping[str, dt.datetime] = field(default_factory=dict)
    running: BackupOperation | None = None


class HostClient(Protocol):
    """Calls to one host's backupd and restored. Every call has a deadline.

    Failures are domain errors: `Unavailable` when the peer cannot be reached
    (or misses the deadline), `ResourceExhausted` when backupd has no free slot,
    `NotFound`, `InvalidArgument`, ... as the peer answered.
    """

    async def job_reports(self) -> list[JobOnHost]:
        """Every job the host has data or a running backup for (BackupService.ListJobStatuses)."""
        ...

    async def job_report(self, job: str) -> JobOnHost: ...

    async def start_backup(self, job: Job, tags: Sequence[str]) -> tuple[BackupOperation, bool]:
        """(operation, started); started is False when a backup of the job was already running."""
        ...

    async def running_backups(self) -> list[BackupOperation]: ...

    async def operation(self, name: str) -> BackupOperation: ...

    async def running_restores(self) -> int:
        """How many restores run on the host (asked of restored)."""
        ...

    async def close(self) -> None: ...


HostClientFactory = Callable[[HostConfig], HostClient]
