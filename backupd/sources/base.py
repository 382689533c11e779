"""The source interface: what a backup needs from wherever the image lives."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager

from backupd.extents import Extent
from lifeboat.errors import FailedPrecondition


class Snapshot(abc.ABC):
    """A frozen view of the source for one backup."""

    size: int

    @abc.abstractmethod
    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes at `offset`; raises SourceChanged on a short read."""

    @abc.abstractmethod
    def data_extents(self, start: int, end: int) -> Iterator[Extent]:
        """Extents within [start, end) that may hold data; everything else reads as zeros."""

    @abc.abstractmethod
    def changed_extents(self) -> list[Extent] | None:
        """Extents that changed since the parent's snapshot, or None when unknown
        (then every block is compared against the parent's manifest)."""


class SourceDriver(abc.ABC):
    """Opens snapshots of one source and cleans up after good backups."""

    kind: str

    @abc.abstractmethod
    def describe(self) -> str:
        """A short text for logs, e.g. "file /var/lib/images/vm.raw"."""

    @abc.abstractmethod
    def snapshot(self, revision_id: str, parent_id: str | None) -> AbstractContextManager[Snapshot]:
        """Freeze the source as of now; `parent_id` is the revision to diff against."""

    def after_good_backup(self, revision_id: str) -> None:
        """Drop what is no longer needed now that `revision_id` is safely stored."""
        return None


class SourceError(FailedPrecondition):
    """The source cannot be read as a consistent image (missing, shrank, unreadable)."""
