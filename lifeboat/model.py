"""Plain domain types shared by the services (no grpc, no generated code)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TagSpec:
    """One tag of a schedule: due every `interval`, expires once `keep` newer revisions carry it."""

    name: str
    interval: dt.timedelta
    keep: int


@dataclass(frozen=True)
class Schedule:
    name: str
    tags: tuple[TagSpec, ...]

    def smallest_interval(self) -> dt.timedelta:
        return min(tag.interval for tag in self.tags)


@dataclass(frozen=True)
class FileSource:
    path: str
    type: str = "file"


@dataclass(frozen=True)
class CephRbdSource:
    pool: str
    image: str
    conf: str = ""
    id: str = ""
    type: str = "ceph-rbd"


Source = FileSource | CephRbdSource


@dataclass(frozen=True)
class FreezeHook:
    """`command` runs before the snapshot; `thaw_command` runs once the snapshot is taken
    (for sources without snapshots: once the image is read), whatever happened."""

    command: str
    timeout: dt.timedelta = dt.timedelta(minutes=5)
    thaw_command: str = ""


@dataclass(frozen=True)
class Job:
    name: str
    host: str
    schedule: Schedule
    source: Source
    freeze: FreezeHook | None = None
    restore_within: dt.timedelta | None = None
    sla_factor: float = 1.5
    extra: dict[str, object] = field(default_factory=dict, compare=False)
